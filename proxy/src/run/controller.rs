//! The gRPC channel to the controller's discovery service.
//!
//! `https://` runs mesh TLS: the proxy presents its workload certificate and requires exactly the
//! controller's SPIFFE ID, checked against the trust bundles, as any meshed peer would be.
//! `http://` is plaintext, for a controller on the same host or reached through a trusted tunnel.
//! The channel is lazy and reconnects by itself; HTTP/2 keep-alives notice a controller that
//! vanished without closing its connections, so the streams on it fail and are reopened.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use mesh_trust::tls::CertResolver;
use mesh_trust::{PeerPolicy, SharedTrustBundles, SpiffeId};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

use super::config::ControllerAddr;

const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The identity and trust a TLS channel needs.
#[derive(Debug)]
pub(super) struct ChannelTls {
    pub(super) bundles: SharedTrustBundles,
    pub(super) certs: Arc<CertResolver>,
    pub(super) controller: SpiffeId,
}

/// A lazy channel to `addr`; `tls` is required for an `https://` address.
pub(super) fn channel(
    addr: &ControllerAddr,
    tls: Option<ChannelTls>,
    connect_timeout: Duration,
) -> Result<Channel, String> {
    // The URI is only the :authority the requests carry; the connector decides where to connect.
    let host = if addr.host.contains(':') {
        format!("[{}]", addr.host)
    } else {
        addr.host.clone()
    };
    let endpoint = Endpoint::from_shared(format!("http://{host}:{}", addr.port))
        .map_err(|e| e.to_string())?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    if !addr.tls {
        return Ok(endpoint.connect_lazy());
    }
    let Some(tls) = tls else {
        return Err("an https:// controller needs the workload's certificate".into());
    };
    let config = mesh_trust::tls::client_config(
        tls.bundles,
        PeerPolicy::Exactly(tls.controller),
        Some(tls.certs),
        &[b"h2"],
    )
    .map_err(|e| e.to_string())?;
    let server_name = ServerName::try_from(addr.host.clone())
        .map_err(|e| format!("{:?} is not a host name: {e}", addr.host))?;
    Ok(endpoint.connect_with_connector_lazy(TlsConnect {
        host: Arc::from(addr.host.as_str()),
        port: addr.port,
        tls: TlsConnector::from(Arc::new(config)),
        server_name,
    }))
}

/// Connects to the controller (resolving its name at each connect) and runs mesh TLS.
#[derive(Clone)]
struct TlsConnect {
    host: Arc<str>,
    port: u16,
    tls: TlsConnector,
    server_name: ServerName<'static>,
}

type Connected = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;

impl tower_service::Service<http::Uri> for TlsConnect {
    type Response = Connected;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Connected, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect((&*this.host, this.port)).await?;
            let _ = tcp.set_nodelay(true);
            let stream = this.tls.connect(this.server_name, tcp).await?;
            Ok(TokioIo::new(stream))
        })
    }
}
