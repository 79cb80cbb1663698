//! Test domains (root + issuer), credentials and a loopback TLS handshake harness.

use std::sync::Arc;
use std::time::Duration;

use mesh_trust::ca::Validity;
use mesh_trust::tls::{self, CertResolver, WorkloadCredentials};
use mesh_trust::{PeerPolicy, SharedTrustBundles, SpiffeId};
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

pub const ALPN: &[&[u8]] = &[b"mesh.opaque"];

pub use mesh_test_support::pki::{Domain, bundles};

pub fn server(
    bundles: &SharedTrustBundles,
    policy: PeerPolicy,
    creds: WorkloadCredentials,
) -> ServerConfig {
    let resolver = Arc::new(CertResolver::new(creds).unwrap());
    tls::server_config(bundles.clone(), policy, resolver, ALPN).unwrap()
}

pub fn client(
    bundles: &SharedTrustBundles,
    policy: PeerPolicy,
    creds: WorkloadCredentials,
) -> ClientConfig {
    let resolver = Arc::new(CertResolver::new(creds).unwrap());
    tls::client_config(bundles.clone(), policy, Some(resolver), ALPN).unwrap()
}

/// A client that presents `creds` as they are, bypassing the resolver's checks: a misbehaving peer.
pub fn raw_client(bundles: &SharedTrustBundles, creds: WorkloadCredentials) -> ClientConfig {
    let verifier = Arc::new(mesh_trust::verify::MeshServerVerifier::new(
        bundles.clone(),
        PeerPolicy::AnyDomain,
    ));
    ClientConfig::builder_with_provider(Arc::new(tls::provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(creds.chain.clone(), creds.key.clone_key())
        .unwrap()
}

/// A server that presents `creds` as they are: a misbehaving peer.
pub fn raw_server(creds: WorkloadCredentials) -> ServerConfig {
    ServerConfig::builder_with_provider(Arc::new(tls::provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(creds.chain.clone(), creds.key.clone_key())
        .unwrap()
}

/// What each side of one handshake saw: the peer's identity, or its error as text.
#[derive(Debug)]
pub struct Outcome {
    pub server: Result<SpiffeId, String>,
    pub client: Result<SpiffeId, String>,
}

impl Outcome {
    pub fn server_err(&self) -> &str {
        self.server
            .as_ref()
            .err()
            .map(String::as_str)
            .unwrap_or_else(|| panic!("server accepted: {self:?}"))
    }
    pub fn client_err(&self) -> &str {
        self.client
            .as_ref()
            .err()
            .map(String::as_str)
            .unwrap_or_else(|| panic!("client accepted: {self:?}"))
    }
}

/// Runs one handshake over loopback TCP, then a one-byte exchange so that a refusal on either side
/// is seen by both.
pub async fn handshake(server: ServerConfig, client: ClientConfig) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let server_side = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        serve_one(&acceptor, tcp).await
    });
    let client_side = connect_one(client, addr).await;
    let server_side = server_side.await.unwrap();
    Outcome {
        server: server_side,
        client: client_side,
    }
}

pub async fn serve_one(acceptor: &TlsAcceptor, tcp: TcpStream) -> Result<SpiffeId, String> {
    let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
    let id = tls::connection_peer_identity(tls.get_ref().1).ok_or("no peer identity")?;
    tls.write_all(b"k").await.map_err(|e| e.to_string())?;
    tls.flush().await.map_err(|e| e.to_string())?;
    Ok(id)
}

pub async fn connect_one(
    client: ClientConfig,
    addr: std::net::SocketAddr,
) -> Result<SpiffeId, String> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = TlsConnector::from(Arc::new(client));
    let name = ServerName::try_from("mesh.internal").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let mut byte = [0u8; 1];
    tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
    tls::connection_peer_identity(tls.get_ref().1).ok_or_else(|| "no peer identity".into())
}

/// A validity window that ended an hour ago.
pub fn expired() -> Validity {
    let now = std::time::SystemTime::now();
    Validity {
        not_before: now - Duration::from_secs(48 * 3600),
        not_after: now - Duration::from_secs(3600),
    }
}

/// A validity window that starts in an hour.
pub fn not_yet_valid() -> Validity {
    let now = std::time::SystemTime::now();
    Validity {
        not_before: now + Duration::from_secs(3600),
        not_after: now + Duration::from_secs(48 * 3600),
    }
}
