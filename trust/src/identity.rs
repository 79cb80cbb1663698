//! The identity service: `Certify(identity, token, csr)` -> leaf, chain and expiry.
//!
//! A workload proves who it is with a token; the service signs a leaf for the identity the token
//! proves and for nothing else. Token validation is a trait: [`StaticTokens`] here, the Kubernetes
//! TokenReview validator with the controller. The service is served over TLS (the workload checks
//! the service's SPIFFE ID before sending its token), and [`IdentityClient`] is the matching client,
//! usable as the rotation's [`LeafIssuer`].

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper_util::rt::TokioIo;
use mesh_api::identity::identity_server::{Identity, IdentityServer};
use mesh_api::identity::{CertifyRequest, CertifyResponse, identity_client};
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Response, Status};

use crate::ca::{CaError, CertificateAuthority, CsrError, IssuedLeaf, Validity};
use crate::rotation::{IssueError, LeafIssuer};
use crate::spiffe::{SpiffeId, SpiffeIdError};
use crate::x509;

/// How long a TLS handshake on the identity port may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A Kubernetes service account, as a token proves it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
}

/// Why a token proved nothing.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    #[error("token refused: {0}")]
    Invalid(String),
    #[error("token could not be checked: {0}")]
    Unavailable(String),
}

/// Turns a token into the service account it proves.
pub trait TokenValidator: Send + Sync + 'static {
    fn validate(
        &self,
        token: &[u8],
    ) -> impl Future<Output = Result<ServiceAccount, TokenError>> + Send;
}

/// A fixed token -> service account table, for tests, the demo and static installs.
#[derive(Default, Clone)]
pub struct StaticTokens {
    tokens: HashMap<Vec<u8>, ServiceAccount>,
}

impl StaticTokens {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, token: impl Into<Vec<u8>>, namespace: &str, name: &str) -> Self {
        self.tokens.insert(
            token.into(),
            ServiceAccount {
                namespace: namespace.into(),
                name: name.into(),
            },
        );
        self
    }
}

impl std::fmt::Debug for StaticTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tokens are secrets: show only whom they prove.
        f.debug_struct("StaticTokens")
            .field(
                "service_accounts",
                &self.tokens.values().collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl TokenValidator for StaticTokens {
    async fn validate(&self, token: &[u8]) -> Result<ServiceAccount, TokenError> {
        self.tokens
            .get(token)
            .cloned()
            .ok_or_else(|| TokenError::Invalid("unknown token".into()))
    }
}

/// Why a Certify call was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertifyError {
    #[error("requested identity is not a valid SPIFFE ID: {0}")]
    BadIdentity(#[from] SpiffeIdError),
    #[error(
        "requested identity {0} is not of the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
    )]
    NotAWorkload(SpiffeId),
    #[error("requested identity {requested} is outside this issuer's trust domain {trust_domain}")]
    WrongTrustDomain {
        requested: SpiffeId,
        trust_domain: String,
    },
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(
        "the token proves service account {namespace}/{name}, not the requested identity {requested}"
    )]
    NotProven {
        requested: SpiffeId,
        namespace: String,
        name: String,
    },
    #[error(transparent)]
    Csr(#[from] CsrError),
    #[error("signing failed: {0}")]
    Signing(CaError),
}

impl From<CertifyError> for Status {
    fn from(e: CertifyError) -> Self {
        let message = e.to_string();
        match e {
            CertifyError::BadIdentity(_)
            | CertifyError::NotAWorkload(_)
            | CertifyError::WrongTrustDomain { .. }
            | CertifyError::Csr(_) => Status::invalid_argument(message),
            CertifyError::Token(TokenError::Invalid(_)) => Status::unauthenticated(message),
            CertifyError::Token(TokenError::Unavailable(_)) => Status::unavailable(message),
            CertifyError::NotProven { .. } => Status::permission_denied(message),
            CertifyError::Signing(_) => Status::internal(message),
        }
    }
}

/// The Certify service over one CA (the cluster's issuer).
#[derive(Debug)]
pub struct IdentityService<V> {
    ca: Arc<CertificateAuthority>,
    validator: V,
    lifetime: Duration,
}

impl<V: TokenValidator> IdentityService<V> {
    pub fn new(ca: Arc<CertificateAuthority>, validator: V, lifetime: Duration) -> Self {
        Self {
            ca,
            validator,
            lifetime,
        }
    }

    /// The whole decision, without gRPC around it.
    pub async fn certify_request(
        &self,
        req: &CertifyRequest,
    ) -> Result<CertifyResponse, CertifyError> {
        let requested = SpiffeId::parse(&req.identity)?;
        let Some((namespace, name)) = requested.workload() else {
            return Err(CertifyError::NotAWorkload(requested));
        };
        if requested.trust_domain_str() != self.ca.trust_domain().as_str() {
            return Err(CertifyError::WrongTrustDomain {
                trust_domain: self.ca.trust_domain().to_string(),
                requested,
            });
        }
        // Authenticate before looking at the CSR: an unauthenticated caller learns nothing else.
        let proven = self.validator.validate(&req.token).await?;
        if proven.namespace != namespace || proven.name != name {
            return Err(CertifyError::NotProven {
                requested,
                namespace: proven.namespace,
                name: proven.name,
            });
        }
        let leaf = self
            .ca
            .sign_csr(
                &requested,
                &req.certificate_signing_request,
                Validity::starting_now(self.lifetime),
            )
            .map_err(|e| match e {
                CaError::Csr(csr) => CertifyError::Csr(csr),
                other => CertifyError::Signing(other),
            })?;
        tracing::info!(identity = %requested, "certified workload");
        Ok(CertifyResponse {
            leaf_certificate: leaf.leaf.to_vec(),
            intermediate_certificates: leaf.intermediates.iter().map(|c| c.to_vec()).collect(),
            valid_until_unix: unix_secs(leaf.validity.not_after),
        })
    }

    pub fn into_server(self) -> IdentityServer<Self> {
        IdentityServer::new(self)
    }
}

#[tonic::async_trait]
impl<V: TokenValidator> Identity for IdentityService<V> {
    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        match self.certify_request(request.get_ref()).await {
            Ok(resp) => Ok(Response::new(resp)),
            Err(error) => {
                // The requested identity is unauthenticated text: bounded and escaped in the log.
                let requested: String = request.get_ref().identity.chars().take(256).collect();
                tracing::warn!(identity = ?requested, %error, "certify refused");
                Err(error.into())
            }
        }
    }
}

/// Serves the identity service over TLS on `listener` until `shutdown` completes.
///
/// `tls` should present the controller's own identity and need no client certificate: workloads
/// call this before they have one. ALPN `h2` is added if missing.
pub async fn serve<V: TokenValidator>(
    listener: TcpListener,
    mut tls: ServerConfig,
    service: IdentityService<V>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    if !tls.alpn_protocols.iter().any(|p| p == b"h2") {
        tls.alpn_protocols.push(b"h2".to_vec());
    }
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    // Handshakes run in their own tasks so one slow client cannot hold up the accept loop.
    let accept_loop = async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "identity accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok::<_, std::io::Error>(tls)).await;
                    }
                    Ok(Err(error)) => {
                        tracing::debug!(%peer, %error, "identity TLS handshake failed")
                    }
                    Err(_) => tracing::debug!(%peer, "identity TLS handshake timed out"),
                }
            });
        }
    };
    let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
    let server = Server::builder()
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(incoming, shutdown);
    tokio::select! {
        result = server => result,
        () = accept_loop => Ok(()),
    }
}

/// Where a workload's token comes from. A file is re-read at every call, because Kubernetes
/// rotates projected service-account tokens in place.
#[derive(Clone)]
pub enum TokenSource {
    Static(Vec<u8>),
    File(PathBuf),
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Static(_) => f.write_str("TokenSource::Static(<redacted>)"),
            Self::File(path) => f.debug_tuple("TokenSource::File").field(path).finish(),
        }
    }
}

impl TokenSource {
    async fn read(&self) -> Result<Vec<u8>, IssueError> {
        match self {
            Self::Static(token) => Ok(token.clone()),
            Self::File(path) => tokio::fs::read(path)
                .await
                .map(|t| t.trim_ascii().to_vec())
                .map_err(|e| {
                    IssueError::Unavailable(format!("reading token {}: {e}", path.display()))
                }),
        }
    }
}

/// A client of the identity service, over TLS that checks the service's identity.
#[derive(Debug, Clone)]
pub struct IdentityClient {
    client: identity_client::IdentityClient<Channel>,
    token: TokenSource,
}

impl IdentityClient {
    /// Connects lazily (and reconnects) to `addr`. `tls` verifies the service (built with
    /// [`crate::tls::client_config`] and the controller's expected identity); `server_name` is SNI.
    pub fn new(
        addr: SocketAddr,
        mut tls: ClientConfig,
        server_name: ServerName<'static>,
        token: TokenSource,
    ) -> Result<Self, tonic::transport::Error> {
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let connector = TlsConnector::from(Arc::new(tls));
        let connect = tower::service_fn(move |_uri: tonic::transport::Uri| {
            let connector = connector.clone();
            let server_name = server_name.clone();
            async move {
                let tcp = TcpStream::connect(addr).await?;
                let _ = tcp.set_nodelay(true);
                let stream = connector.connect(server_name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        });
        // The URI is only a label: the connector decides where to connect.
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(HANDSHAKE_TIMEOUT)
            .connect_with_connector_lazy(connect);
        Ok(Self {
            client: identity_client::IdentityClient::new(channel),
            token,
        })
    }
}

impl LeafIssuer for IdentityClient {
    async fn certify(
        &self,
        identity: &SpiffeId,
        csr_der: Vec<u8>,
    ) -> Result<IssuedLeaf, IssueError> {
        let token = self.token.read().await?;
        let request = CertifyRequest {
            identity: identity.to_string(),
            token,
            certificate_signing_request: csr_der,
        };
        let response = self
            .client
            .clone()
            .certify(request)
            .await
            .map_err(|status| match status.code() {
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown => {
                    IssueError::Unavailable(status.message().to_owned())
                }
                _ => IssueError::Refused(format!("{:?}: {}", status.code(), status.message())),
            })?
            .into_inner();
        leaf_from_response(response)
    }
}

fn leaf_from_response(response: CertifyResponse) -> Result<IssuedLeaf, IssueError> {
    let leaf = CertificateDer::from(response.leaf_certificate);
    let info = x509::parse(&leaf)
        .map_err(|e| IssueError::Refused(format!("issued leaf is not valid X.509: {e}")))?;
    let intermediates = response
        .intermediate_certificates
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    Ok(IssuedLeaf {
        leaf,
        intermediates,
        validity: info.validity,
    })
}

fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
