//! The QUIC side's TLS and transport settings, and what a connection's handshake established.
//!
//! Both directions run mutual TLS 1.3 through mesh-trust's verifiers, with ALPN `mesh.gw`:
//! - As a server, the TLS verifier accepts a chain from any domain in the bundle set, and the
//!   connection is then kept only if the peer's SPIFFE ID is the gateway identity of a current
//!   Link ([`linked_gateway`]). The check runs against the live link list for every new
//!   connection, so a removed Link refuses its gateway at once without rebuilding TLS state.
//! - As a client, the verifier requires exactly the identity the Link names
//!   (`PeerPolicy::Exactly`), and the identity is checked once more after the handshake.
//!
//! The initiator of a connection opens every stream on it; the acceptor serves them. A client
//! connection therefore grants the peer no streams at all.

use std::sync::Arc;
use std::time::Duration;

use mesh_api::ports::ALPN_GATEWAY;
use mesh_trust::tls::{self, CertResolver, TlsError};
use mesh_trust::{PeerPolicy, SharedTrustBundles, SpiffeId};
use quinn::crypto::rustls::{HandshakeData, QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};
use rustls_pki_types::CertificateDer;

use crate::config::Link;

/// Application close and reset codes on the QUIC port.
pub mod code {
    use quinn::VarInt;

    /// The gateway is shutting down.
    pub const SHUTDOWN: VarInt = VarInt::from_u32(0);
    /// The peer is not the gateway of a linked cluster, or did not speak `mesh.gw`.
    pub const FORBIDDEN: VarInt = VarInt::from_u32(1);
    /// A stream ended because its tunnel failed (bad header, timeout, relay error).
    pub const STREAM_FAILED: VarInt = VarInt::from_u32(2);
    /// The peer already holds as many connections as one linked gateway may.
    pub const TOO_MANY_CONNECTIONS: VarInt = VarInt::from_u32(3);
}

/// Why QUIC settings could not be built.
#[derive(Debug, thiserror::Error)]
pub enum QuicConfigError {
    /// mesh-trust refused to build the TLS configuration.
    #[error("cannot build the gateway's TLS configuration: {0}")]
    Tls(#[from] TlsError),
    /// The crypto provider lacks the cipher suite QUIC's initial packets need.
    #[error("the crypto provider lacks TLS_AES_128_GCM_SHA256, which QUIC needs: {0}")]
    Suite(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// The QUIC idle timeout is out of range.
    #[error("the QUIC idle timeout {0:?} is out of range")]
    IdleTimeout(Duration),
}

/// Transport settings shared by both directions: keep-alives at a third of the idle timeout.
fn transport(idle: Duration, bidi_streams: u32) -> Result<Arc<TransportConfig>, QuicConfigError> {
    let mut transport = TransportConfig::default();
    transport
        .max_idle_timeout(Some(
            IdleTimeout::try_from(idle).map_err(|_| QuicConfigError::IdleTimeout(idle))?,
        ))
        .keep_alive_interval(Some(idle / 3))
        .max_concurrent_bidi_streams(VarInt::from_u32(bidi_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(0));
    Ok(Arc::new(transport))
}

/// The server side: mutual TLS accepting chains of any domain in `bundles` (narrowed to linked
/// gateways after the handshake), `max_streams` concurrent tunnels per connection.
pub fn server_config(
    bundles: SharedTrustBundles,
    certs: Arc<CertResolver>,
    idle: Duration,
    max_streams: u32,
) -> Result<quinn::ServerConfig, QuicConfigError> {
    let tls = tls::server_config(bundles, PeerPolicy::AnyDomain, certs, &[ALPN_GATEWAY])?;
    let crypto = QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport(idle, max_streams)?);
    Ok(config)
}

/// The client side towards `link`'s gateway: requires exactly its identity, and grants the peer
/// no streams.
pub fn client_config(
    bundles: SharedTrustBundles,
    certs: Arc<CertResolver>,
    link: &Link,
    idle: Duration,
) -> Result<quinn::ClientConfig, QuicConfigError> {
    let tls = tls::client_config(
        bundles,
        PeerPolicy::Exactly(link.gateway_identity.clone()),
        Some(certs),
        &[ALPN_GATEWAY],
    )?;
    let crypto = QuicClientConfig::try_from(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport(idle, 0)?);
    Ok(config)
}

/// The ALPN protocol a connection negotiated.
pub fn negotiated_alpn(connection: &quinn::Connection) -> Option<Vec<u8>> {
    connection
        .handshake_data()?
        .downcast::<HandshakeData>()
        .ok()?
        .protocol
}

/// The SPIFFE ID the peer of a connection presented.
pub fn peer_identity(connection: &quinn::Connection) -> Option<SpiffeId> {
    let chain = connection
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    mesh_trust::verify::peer_identity(chain.first()?).ok()
}

/// The link whose gateway `peer` is, if any: the only peers the QUIC port serves.
pub fn linked_gateway<'a>(links: &'a [Link], peer: &SpiffeId) -> Option<&'a Link> {
    links
        .iter()
        .find(|link| link.is_consistent() && link.gateway_identity == *peer)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use mesh_trust::TrustDomain;

    fn link(cluster: &str, domain: &str) -> Link {
        let trust_domain = TrustDomain::new(domain).unwrap();
        Link {
            cluster: cluster.into(),
            gateway_identity: crate::config::gateway_identity(&trust_domain, "mesh").unwrap(),
            trust_domain,
            addresses: vec!["127.0.0.1".into()],
            port: 4180,
        }
    }

    #[test]
    fn only_a_linked_gateway_identity_is_served() {
        let links = [link("east", "east.local"), link("north", "north.local")];
        let east_gw = SpiffeId::parse("spiffe://east.local/ns/mesh/sa/mesh-gateway").unwrap();
        assert_eq!(linked_gateway(&links, &east_gw).unwrap().cluster, "east");
        // A workload of a linked domain is not its gateway.
        let workload = SpiffeId::parse("spiffe://east.local/ns/default/sa/web").unwrap();
        assert!(linked_gateway(&links, &workload).is_none());
        // The gateway identity of an unlinked domain.
        let south = SpiffeId::parse("spiffe://south.local/ns/mesh/sa/mesh-gateway").unwrap();
        assert!(linked_gateway(&links, &south).is_none());
        // A link naming a gateway outside its own trust domain is ignored.
        let mut odd = link("odd", "odd.local");
        odd.gateway_identity = south.clone();
        assert!(!odd.is_consistent());
        assert!(linked_gateway(&[odd], &south).is_none());
    }
}
