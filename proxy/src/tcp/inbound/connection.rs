//! One inbound connection, step by step.
//!
//! A meshed peer: detect its ClientHello, terminate mTLS, read the transport header, then by
//! ALPN either connect to the application and splice (`mesh.opaque`) or serve HTTP/2 and
//! forward each request to the application (`mesh.h2`, see [`crate::http::inbound`]).
//!
//! Anything else is traffic that iptables redirected here on its way to an application port:
//! its original destination (from [`crate::orig_dst`]) names that port, and the bytes go there
//! untouched, detection's included. A connection that was not redirected (a client that dialled
//! the inbound port directly without mesh TLS) has nowhere to go and is closed.
//!
//! Every step that waits on the peer has a deadline (detection, then handshake and header
//! together), so a silent or slow peer (slowloris, a half-open socket, a handshake that never
//! finishes) holds one connection for a bounded time and nothing else.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::BytesMut;
use mesh_api::ports::{ALPN_H2, ALPN_OPAQUE};
use mesh_trust::SpiffeId;
use mesh_trust::tls::connection_peer_identity;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_rustls::TlsAcceptor;

use super::metered::{ByteCounts, Metered};
use super::{InboundConfig, InboundError, InboundEvent};
use crate::detect::{Protocol, detect_stream};
use crate::drain;
use crate::http::inbound::{AppClients, HopConnection};
use crate::http::plain::{PlainConnection, serve_plain};
use crate::metrics::{Direction, LabelValue, Labels, TlsStatus};
use crate::orig_dst::{self, OrigDstError};
use crate::tcp::replay::Replay;
use crate::tcp::splice::{Transferred, splice};
use crate::transport_header::{MAX_TRANSPORT_HEADER_LEN, MeshTransportHeader};

/// What the listener shares with each connection.
pub(super) struct Shared<'a> {
    pub(super) config: &'a InboundConfig,
    /// The listener's own address, which neither a header nor a redirect may name.
    pub(super) local: Option<SocketAddr>,
    pub(super) apps: &'a AppClients,
}

// === impl Shared ===

impl Shared<'_> {
    fn own_ports(&self) -> OwnPorts<'_> {
        OwnPorts {
            local: self.local,
            denied: &self.config.denied_ports,
        }
    }
}

/// A connection that is not meshed, with what is known of it so far.
struct Redirected {
    tcp: TcpStream,
    /// Its original destination, as the kernel reported it when the connection was accepted.
    original: Result<SocketAddr, OrigDstError>,
    protocol: Protocol,
    /// The bytes detection read, to be replayed.
    buffered: BytesMut,
    client: SocketAddr,
}

/// What detection found.
enum Detected {
    /// A ClientHello offering a mesh ALPN; the bytes read so far.
    Meshed(BytesMut),
    /// Anything else, with the bytes read so far.
    Plain {
        protocol: Protocol,
        buffered: BytesMut,
    },
}

/// Serves one connection to its end; returns the peer's identity, once known, and the outcome.
pub(super) async fn serve(
    mut tcp: TcpStream,
    client: SocketAddr,
    shared: Shared<'_>,
    watch: drain::Watch,
) -> (Option<SpiffeId>, Result<Transferred, InboundError>) {
    // Replies are spliced as they come; Nagle would only add latency. Best effort: a socket
    // that refuses the option still works.
    let _ = tcp.set_nodelay(true);

    // A redirected connection to an opaque port (a server-speaks-first protocol, whose client
    // sends nothing first) is forwarded without waiting for detection. Meshed peers dial the
    // inbound port itself, so they are never redirected and always detected.
    let original = orig_dst::original_destination(&tcp);
    let redirected_opaque = original
        .as_ref()
        .is_ok_and(|original| shared.config.opaque_ports.contains(&original.port()));
    let detected = if redirected_opaque {
        Ok(Detected::Plain {
            protocol: Protocol::Opaque,
            buffered: BytesMut::new(),
        })
    } else {
        detect(&mut tcp, shared.config.detect_timeout).await
    };
    match detected {
        Ok(Detected::Meshed(hello)) => serve_meshed(tcp, hello, client, &shared, watch).await,
        Ok(Detected::Plain { protocol, buffered }) => {
            let redirected = Redirected {
                tcp,
                original,
                protocol,
                buffered,
                client,
            };
            match forward_redirected(redirected, &shared, watch).await {
                Ok(transferred) => {
                    tracing::debug!(%transferred, "redirected connection closed");
                    (None, Ok(transferred))
                }
                Err(error) => closed(None, error),
            }
        }
        Err(error) => closed(None, error),
    }
}

/// A meshed peer: mTLS, the transport header, then the opaque splice or the HTTP/2 hop.
async fn serve_meshed(
    tcp: TcpStream,
    hello: BytesMut,
    client: SocketAddr,
    shared: &Shared<'_>,
    watch: drain::Watch,
) -> (Option<SpiffeId>, Result<Transferred, InboundError>) {
    let config = shared.config;
    let deadline = Instant::now() + config.header_timeout;
    let acceptor = TlsAcceptor::from(config.tls.clone());
    let mut tls = match timeout_at(deadline, acceptor.accept(Replay::new(hello, tcp))).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return closed(None, InboundError::Handshake(e)),
        Err(_) => {
            return closed(None, InboundError::HandshakeTimeout(config.header_timeout));
        }
    };

    let session = tls.get_ref().1;
    let Some(peer) = connection_peer_identity(session) else {
        return closed(None, InboundError::NoPeerIdentity);
    };
    let http = match session.alpn_protocol() {
        Some(ALPN_OPAQUE) => false,
        Some(ALPN_H2) => true,
        other => {
            let error = InboundError::Alpn(other.map(<[u8]>::to_vec));
            return closed(Some(peer), error);
        }
    };

    let (header, early) = match timeout_at(deadline, read_header(&mut tls)).await {
        Ok(Ok(read)) => read,
        Ok(Err(error)) => return closed(Some(peer), error),
        Err(_) => {
            return closed(
                Some(peer),
                InboundError::HeaderTimeout(config.header_timeout),
            );
        }
    };

    if let Err(error) = check_port(header.port, &shared.own_ports()) {
        return closed(Some(peer), error);
    }
    let app_addr = SocketAddr::new(config.local_app_ip, header.port);

    let labels = Labels {
        authority: header
            .authority
            .as_ref()
            .map(|a| LabelValue::new(&a.to_string()))
            .unwrap_or_default(),
        client_id: LabelValue::new(peer.as_str()),
        ..Labels::new(Direction::Inbound, TlsStatus::Mutual)
    };
    // Application bytes (or the HTTP/2 preface) that came in with the header go first.
    let downstream = Replay::new(early, tls);

    if http {
        tracing::debug!(%peer, app = %app_addr, authority = ?header.authority, "inbound mesh.h2 connection opened");
        config.emit(InboundEvent::Opened {
            client,
            peer: peer.clone(),
            header,
            app: app_addr,
        });
        let counts = ByteCounts::new(config.metrics.as_ref().map(|m| m.tcp_open(&labels)));
        let hop = HopConnection {
            peer: peer.clone(),
            client,
            app: shared.apps.get(app_addr.port()),
            metrics: config.metrics.clone(),
            tap: config.tap.clone(),
            upgrade_idle_timeout: config.idle_timeout,
        };
        let io = Metered::new(downstream, counts.clone());
        return match crate::http::inbound::serve(io, hop, &config.http, watch).await {
            Ok(()) => {
                let transferred = counts.transferred();
                tracing::debug!(%peer, %transferred, "inbound mesh.h2 connection closed");
                (Some(peer), Ok(transferred))
            }
            Err(error) => closed(Some(peer), InboundError::Http2(error)),
        };
    }

    let mut app = match connect_app(app_addr, config.app_connect_timeout).await {
        Ok(app) => app,
        Err(error) => return closed(Some(peer), error),
    };
    tracing::debug!(
        %peer,
        app = %app_addr,
        authority = ?header.authority,
        "inbound connection opened"
    );
    config.emit(InboundEvent::Opened {
        client,
        peer: peer.clone(),
        header,
        app: app_addr,
    });
    let counts = ByteCounts::new(config.metrics.as_ref().map(|m| m.tcp_open(&labels)));
    let mut downstream = Metered::new(downstream, counts);
    match splice(&mut downstream, &mut app, config.idle_timeout).await {
        Ok(transferred) => {
            tracing::debug!(%peer, %transferred, "inbound connection closed");
            (Some(peer), Ok(transferred))
        }
        Err(error) => closed(Some(peer), error.into()),
    }
}

/// Traffic that is not meshed goes where iptables found it going: `local_app_ip` at its
/// original destination port. HTTP is served as HTTP, so that headers only the mesh may set
/// (`mesh-client-id`) are removed on the way (see [`crate::http::plain`]); anything else goes as
/// opaque bytes, detection's replayed first.
async fn forward_redirected(
    redirected: Redirected,
    shared: &Shared<'_>,
    watch: drain::Watch,
) -> Result<Transferred, InboundError> {
    let Redirected {
        tcp,
        original,
        protocol,
        buffered,
        client,
    } = redirected;
    let config = shared.config;
    let target = redirect_target(original, config.local_app_ip, &shared.own_ports())?;
    let Some((original, app_addr)) = target else {
        return Err(InboundError::NotMeshed {
            protocol,
            sent: buffered.len(),
        });
    };
    if let Protocol::Http1 { .. } | Protocol::Http2 = protocol {
        config.emit(InboundEvent::Forwarded {
            client,
            original,
            app: app_addr,
        });
        let conn = PlainConnection {
            app: shared.apps.get(app_addr.port()),
            client,
            metrics: config.metrics.clone(),
            tap: config.tap.clone(),
            header_read_timeout: config.header_timeout,
            upgrade_idle_timeout: config.idle_timeout,
        };
        let http2 = matches!(protocol, Protocol::Http2);
        serve_plain(Replay::new(buffered, tcp), http2, conn, watch)
            .await
            .map_err(InboundError::PlainHttp)?;
        return Ok(Transferred::default());
    }
    let mut app = connect_app(app_addr, config.app_connect_timeout).await?;
    tracing::debug!(%original, app = %app_addr, ?protocol, "redirected connection forwarded");
    config.emit(InboundEvent::Forwarded {
        client,
        original,
        app: app_addr,
    });
    let labels = Labels {
        authority: LabelValue::new(&original.to_string()),
        ..Labels::new(Direction::Inbound, TlsStatus::Plaintext)
    };
    let counts = ByteCounts::new(config.metrics.as_ref().map(|m| m.tcp_open(&labels)));
    let mut downstream = Metered::new(Replay::new(buffered, tcp), counts);
    Ok(splice(&mut downstream, &mut app, config.idle_timeout).await?)
}

/// The ports a connection may never be sent to: the listener's own, and the denied ones.
struct OwnPorts<'a> {
    /// The listener's address; unknown means every port is refused.
    local: Option<SocketAddr>,
    denied: &'a BTreeSet<u16>,
}

/// Where a connection that is not meshed goes, from what the kernel said of its original
/// destination: `(original, app_ip:original_port)`, or `None` when it was not redirected (the
/// client dialled the inbound port itself; `Unsupported` means nothing can have been).
fn redirect_target(
    original: Result<SocketAddr, OrigDstError>,
    app_ip: IpAddr,
    own: &OwnPorts<'_>,
) -> Result<Option<(SocketAddr, SocketAddr)>, InboundError> {
    let original = match original {
        Ok(original) => original,
        Err(error)
            if error.is_not_redirected() || matches!(error, OrigDstError::Unsupported { .. }) =>
        {
            return Ok(None);
        }
        Err(error) => return Err(InboundError::OriginalDestination(error)),
    };
    check_port(original.port(), own)?;
    Ok(Some((original, SocketAddr::new(app_ip, original.port()))))
}

/// Never into the proxy itself: the rule for a transport header's port, and for a redirected
/// connection's original port (iptables' exclusions should keep the proxy's ports out; this
/// does not rely on them). Without the listener's own address the check cannot be made, so
/// nothing is forwarded.
fn check_port(port: u16, own: &OwnPorts<'_>) -> Result<(), InboundError> {
    let is_self = own.local.is_none_or(|local| local.port() == port);
    if is_self || own.denied.contains(&port) {
        return Err(InboundError::Loop { port });
    }
    Ok(())
}

/// Reads until detection decides, within `detect_timeout`: a ClientHello offering a mesh ALPN,
/// or anything else, with the bytes read.
async fn detect(tcp: &mut TcpStream, detect_timeout: Duration) -> Result<Detected, InboundError> {
    let detected = detect_stream(tcp, detect_timeout)
        .await
        .map_err(InboundError::Detect)?;
    match detected.verdict {
        Ok(Protocol::Tls(hello))
            if hello.offers_alpn(ALPN_OPAQUE) || hello.offers_alpn(ALPN_H2) =>
        {
            Ok(Detected::Meshed(detected.buffered))
        }
        Ok(protocol) => Ok(Detected::Plain {
            protocol,
            buffered: detected.buffered,
        }),
        Err(refusal) => Err(InboundError::Refused(refusal)),
    }
}

/// Reads the transport header; returns it and any application bytes that came after it.
///
/// The buffer stays small: the frame decoder refuses a declared length above
/// [`MAX_TRANSPORT_HEADER_LEN`] as soon as it sees it, so at most one header and one read beyond
/// it are ever held.
async fn read_header<S>(io: &mut S) -> Result<(MeshTransportHeader, BytesMut), InboundError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(MAX_TRANSPORT_HEADER_LEN);
    loop {
        if let Some(header) = MeshTransportHeader::decode(&mut buf)? {
            return Ok((header, buf));
        }
        buf.reserve(MAX_TRANSPORT_HEADER_LEN);
        let n = io
            .read_buf(&mut buf)
            .await
            .map_err(InboundError::ReadHeader)?;
        if n == 0 {
            let header = MeshTransportHeader::decode_eof(&mut buf)?;
            return Ok((header, buf));
        }
    }
}

async fn connect_app(
    addr: SocketAddr,
    connect_timeout: Duration,
) -> Result<TcpStream, InboundError> {
    let app = timeout(connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| InboundError::AppConnectTimeout {
            addr,
            timeout: connect_timeout,
        })?
        .map_err(|source| InboundError::AppConnect { addr, source })?;
    let _ = app.set_nodelay(true);
    Ok(app)
}

/// Logs why a connection closed and returns that as its outcome.
fn closed(
    peer: Option<SpiffeId>,
    error: InboundError,
) -> (Option<SpiffeId>, Result<Transferred, InboundError>) {
    match &peer {
        // A peer that proved its identity and still failed is worth an operator's attention;
        // idle or reset splices are routine.
        Some(peer) if !matches!(error, InboundError::Splice(_)) => {
            tracing::info!(%peer, %error, "inbound connection closed")
        }
        Some(peer) => tracing::debug!(%peer, %error, "inbound connection closed"),
        // Scanners and health checks: not worth more than a debug line each.
        None => tracing::debug!(%error, "inbound connection closed"),
    }
    (peer, Err(error))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use nix::errno::Errno;

    use super::*;

    const APP_IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn target(
        original: Result<SocketAddr, OrigDstError>,
        local: Option<SocketAddr>,
    ) -> Result<Option<(SocketAddr, SocketAddr)>, InboundError> {
        let denied = BTreeSet::from([4140, 4190, 4191]);
        redirect_target(
            original,
            APP_IP,
            &OwnPorts {
                local,
                denied: &denied,
            },
        )
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|_| panic!("{s} is an address"))
    }

    #[test]
    fn a_redirected_connection_goes_to_the_app_at_its_original_port() {
        let local = Some(addr("0.0.0.0:4143"));
        let found = target(Ok(addr("10.0.0.7:8080")), local);
        assert!(
            matches!(found, Ok(Some((o, app))) if o == addr("10.0.0.7:8080") && app == addr("127.0.0.1:8080")),
            "{found:?}"
        );
    }

    #[test]
    fn a_redirect_to_the_proxys_own_ports_is_refused() {
        let local = Some(addr("0.0.0.0:4143"));
        for port in [4143, 4140, 4190, 4191] {
            let found = target(Ok(SocketAddr::new(APP_IP, port)), local);
            assert!(
                matches!(found, Err(InboundError::Loop { port: p }) if p == port),
                "{port}: {found:?}"
            );
        }
        // Without the listener's own address nothing can be checked, so nothing goes.
        let found = target(Ok(addr("10.0.0.7:8080")), None);
        assert!(matches!(found, Err(InboundError::Loop { .. })), "{found:?}");
    }

    #[test]
    fn a_connection_that_was_not_redirected_has_no_target() {
        let local = Some(addr("0.0.0.0:4143"));
        for not_redirected in [
            OrigDstError::NotRedirected,
            OrigDstError::ToSelf(addr("127.0.0.1:4143")),
            OrigDstError::Unsupported { family: "IPv4" },
        ] {
            assert!(matches!(target(Err(not_redirected), local), Ok(None)));
        }
        let found = target(Err(OrigDstError::Sys(Errno::EBADF)), local);
        assert!(
            matches!(found, Err(InboundError::OriginalDestination(_))),
            "{found:?}"
        );
    }
}
