//! The transport of the dev cluster: HTTPS (HTTP/1.1 and HTTP/2 by ALPN) with the cluster's own
//! CA, optional plain HTTP, and the kubeconfig that points kube-rs or kubectl at it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::api::{Cluster, ClusterConfig};
use super::auth::{User, random_token};

/// Why the dev cluster could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Binding the listen address failed.
    #[error("binding {address}: {source}; choose another address or port")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// Generating the CA or the serving certificate failed.
    #[error("generating the dev cluster's certificates: {0}")]
    Certificates(#[from] rcgen::Error),
    /// The TLS configuration was refused.
    #[error("building the TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The snapshot file could not be read or is not one this server wrote.
    #[error("loading the snapshot {path}: {reason}; delete it to start empty")]
    Snapshot {
        /// The snapshot file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The kubeconfig could not be rendered.
    #[error("rendering the kubeconfig: {0}")]
    Kubeconfig(#[from] serde_yaml::Error),
}

/// How to start a dev cluster.
#[derive(Debug, Clone)]
pub struct DevClusterConfig {
    /// The cluster name used in the kubeconfig (context, cluster and user entries).
    pub name: String,
    /// Where to listen; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Serve HTTPS (the default) or plain HTTP.
    pub tls: bool,
    /// Users: bearer token -> user. When empty, one unrestricted `admin` user with a random
    /// token.
    pub tokens: HashMap<String, User>,
    /// Watch events kept per resource before a resuming watch gets 410 Expired.
    pub history_limit: usize,
    /// How often watches that asked for bookmarks get one.
    pub bookmark_interval: Duration,
    /// Run the endpoints controller, which keeps Endpoints and EndpointSlices of Services with
    /// a selector in step with their ready Pods.
    pub endpoints_controller: bool,
    /// A snapshot file: loaded on start when it exists, written on shutdown. It keeps the
    /// objects, issued service-account tokens, the CA and the generated admin token, so a
    /// restarted cluster on the same address works with the same kubeconfig.
    pub snapshot: Option<PathBuf>,
}

impl Default for DevClusterConfig {
    fn default() -> Self {
        Self {
            name: "dev".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: true,
            tokens: HashMap::new(),
            history_limit: 1000,
            bookmark_interval: Duration::from_secs(5),
            endpoints_controller: false,
            snapshot: None,
        }
    }
}

/// A running dev cluster. Dropping it stops the server.
#[derive(Debug)]
pub struct DevCluster {
    address: SocketAddr,
    kubeconfig: String,
    ca_pem: Option<String>,
    ca_key_pem: Option<String>,
    admin_token: String,
    snapshot: Option<PathBuf>,
    cluster: Arc<Cluster>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl DevCluster {
    /// Binds, generates the CA and serving certificate, and starts serving in the background.
    pub async fn start(config: DevClusterConfig) -> Result<Self, StartError> {
        let saved = match &config.snapshot {
            Some(path) => load_snapshot(path)?,
            None => None,
        };
        let saved_text = |field: &str| {
            saved
                .as_ref()
                .and_then(|s| s.get(field))
                .and_then(serde_json::Value::as_str)
                .map(String::from)
        };
        let mut tokens = config.tokens.clone();
        if tokens.is_empty() {
            let token = saved_text("adminToken").unwrap_or_else(random_token);
            tokens.insert(token, User::admin("admin"));
        }
        // The kubeconfig's user: an unrestricted one if there is one, else the first by name.
        let (admin_token, admin_user) = tokens
            .iter()
            .min_by(|a, b| (a.1.rules.is_some(), &a.1.name).cmp(&(b.1.rules.is_some(), &b.1.name)))
            .map(|(t, u)| (t.clone(), u.name.clone()))
            .unwrap_or_default();
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Bind {
                    address: config.listen,
                    source,
                })?;
        let address = listener.local_addr().map_err(|source| StartError::Bind {
            address: config.listen,
            source,
        })?;
        let (acceptor, ca) = if config.tls {
            let saved_ca = saved_text("caCert").zip(saved_text("caKey"));
            let (acceptor, ca) = tls_acceptor(address, saved_ca)?;
            (Some(acceptor), Some(ca))
        } else {
            (None, None)
        };
        let (ca_pem, ca_key_pem) = ca.unzip();
        let scheme = if config.tls { "https" } else { "http" };
        // A wildcard listen address is reached through loopback.
        let reachable = if address.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], address.port()))
        } else {
            address
        };
        let server = format!("{scheme}://{reachable}");
        let cluster = Cluster::new(ClusterConfig {
            tokens,
            history_limit: config.history_limit,
            bookmark_interval: config.bookmark_interval,
        });
        cluster.set_server_address(address.to_string());
        if let (Some(saved), Some(path)) = (&saved, &config.snapshot) {
            let skipped = cluster
                .import(saved.get("cluster").unwrap_or(&serde_json::Value::Null))
                .map_err(|e| StartError::Snapshot {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            if skipped > 0 {
                tracing::warn!(skipped, path = %path.display(), "snapshot objects of unknown resources skipped");
            }
        }
        let kubeconfig = kubeconfig(
            &config.name,
            &server,
            ca_pem.as_deref(),
            &admin_user,
            &admin_token,
        )?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = vec![tokio::spawn(serve(
            listener,
            acceptor,
            Arc::clone(&cluster),
            shutdown_rx.clone(),
        ))];
        if config.endpoints_controller {
            tasks.push(tokio::spawn(
                Arc::clone(&cluster).run_endpoints_controller(shutdown_rx),
            ));
        }
        Ok(Self {
            address,
            kubeconfig,
            ca_pem,
            ca_key_pem,
            admin_token,
            snapshot: config.snapshot.clone(),
            cluster,
            shutdown,
            tasks,
        })
    }

    /// The address the server listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// A kubeconfig (YAML) for the admin user: server URL, CA, bearer token.
    pub fn kubeconfig(&self) -> &str {
        &self.kubeconfig
    }

    /// The PEM of the CA that signed the serving certificate (None for plain HTTP).
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// The admin user's bearer token.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The cluster state (for in-process inspection).
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// Writes the kubeconfig to a file, readable by its owner only (it holds a bearer token).
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        options.open(path)?.write_all(self.kubeconfig.as_bytes())
    }

    /// Writes the snapshot file now (a no-op without one). The write goes to a temporary file
    /// renamed over the old one, so a crash never leaves half a snapshot.
    pub fn save_snapshot(&self) -> std::io::Result<()> {
        let Some(path) = &self.snapshot else {
            return Ok(());
        };
        let snapshot = json!({
            "cluster": self.cluster.export(),
            "caCert": self.ca_pem,
            "caKey": self.ca_key_pem,
            "adminToken": self.admin_token,
        });
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, snapshot.to_string())?;
        std::fs::rename(&tmp, path)
    }

    /// Stops accepting, closes connections, waits for the server's tasks and writes the
    /// snapshot file if there is one.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        self.shutdown.send_replace(true);
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
        let saved = self.save_snapshot();
        // Already saved: Drop must not write again.
        self.snapshot = None;
        saved
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        for task in &self.tasks {
            task.abort();
        }
        if let Err(e) = self.save_snapshot() {
            tracing::warn!(error = %e, "writing the dev cluster snapshot failed");
        }
    }
}

/// Why [`run`] ended with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The cluster did not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The snapshot could not be written on shutdown.
    #[error("writing the snapshot on shutdown: {0}")]
    Snapshot(#[source] std::io::Error),
}

/// Runs a dev cluster until `shutdown` completes: starts it, hands it to `ready` (to print or
/// write its kubeconfig), then stops it and writes its snapshot. This is the whole of a
/// `devcluster` command.
pub async fn run(
    config: DevClusterConfig,
    shutdown: impl std::future::Future<Output = ()>,
    ready: impl FnOnce(&DevCluster),
) -> Result<(), RunError> {
    let cluster = DevCluster::start(config).await?;
    ready(&cluster);
    shutdown.await;
    cluster.shutdown().await.map_err(RunError::Snapshot)
}

/// Serves the cluster's API on `listener` (TLS when `acceptor` is given) until `shutdown` turns
/// true. Each connection runs in its own task; a bad connection ends only itself.
pub async fn serve(
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    cluster: Arc<Cluster>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let (tcp, _) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let cluster = Arc::clone(&cluster);
        let acceptor = acceptor.clone();
        let mut stop = shutdown.clone();
        connections.spawn(async move {
            let service = service_fn(move |request| {
                let cluster = Arc::clone(&cluster);
                async move { Ok::<_, std::convert::Infallible>(cluster.handle(request).await) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let result = match acceptor {
                Some(acceptor) => match acceptor.accept(tcp).await {
                    Ok(tls) => {
                        let conn = builder.serve_connection(TokioIo::new(tls), service);
                        tokio::pin!(conn);
                        tokio::select! {
                            r = conn.as_mut() => r,
                            _ = stop.wait_for(|s| *s) => Ok(()),
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        return;
                    }
                },
                None => {
                    let conn = builder.serve_connection(TokioIo::new(tcp), service);
                    tokio::pin!(conn);
                    tokio::select! {
                        r = conn.as_mut() => r,
                        _ = stop.wait_for(|s| *s) => Ok(()),
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
        while connections.try_join_next().is_some() {}
    }
    connections.shutdown().await;
}

/// A fresh CA and a serving certificate for localhost and the listen address.
fn load_snapshot(path: &Path) -> Result<Option<serde_json::Value>, StartError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(StartError::Snapshot {
                path: path.to_path_buf(),
                reason: e.to_string(),
            });
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| StartError::Snapshot {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

/// The serving TLS config, with a fresh CA or the saved one (cert PEM, key PEM), and the CA's
/// (cert PEM, key PEM).
fn tls_acceptor(
    address: SocketAddr,
    saved_ca: Option<(String, String)>,
) -> Result<(tokio_rustls::TlsAcceptor, (String, String)), StartError> {
    let (ca_pem, issuer) = match saved_ca {
        Some((cert, key)) => {
            let key = KeyPair::from_pem(&key)?;
            let issuer = Issuer::from_ca_cert_pem(&cert, key)?;
            (cert, issuer)
        }
        None => fresh_ca()?,
    };
    let ca_key_pem = issuer.key().serialize_pem();
    let acceptor = serving_config(address, &issuer)?;
    Ok((acceptor, (ca_pem, ca_key_pem)))
}

/// A new self-signed CA: its certificate PEM and its issuer.
fn fresh_ca() -> Result<(String, Issuer<'static, KeyPair>), StartError> {
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "mesh dev cluster CA");
    ca_params.distinguished_name = dn;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    Ok((ca_cert.pem(), Issuer::new(ca_params, ca_key)))
}

fn serving_config(
    address: SocketAddr,
    issuer: &Issuer<'static, KeyPair>,
) -> Result<tokio_rustls::TlsAcceptor, StartError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(vec!["localhost".to_string()])?;
    params
        .subject_alt_names
        .push(SanType::IpAddress(address.ip()));
    if !address.ip().is_loopback() {
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
    }
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "mesh-devcluster");
    params.distinguished_name = dn;
    let cert = params.signed_by(&key, issuer)?;
    let chain = vec![CertificateDer::from(cert.der().to_vec())];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(mesh_trust::tls::provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

fn kubeconfig(
    name: &str,
    server: &str,
    ca_pem: Option<&str>,
    user: &str,
    token: &str,
) -> Result<String, StartError> {
    use base64::Engine;
    let mut cluster = json!({"server": server});
    if let Some(pem) = ca_pem {
        cluster["certificate-authority-data"] =
            json!(base64::engine::general_purpose::STANDARD.encode(pem));
    }
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": cluster}],
        "users": [{"name": format!("{name}-{user}"), "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": format!("{name}-{user}"), "namespace": "default"}}],
        "current-context": name,
        "preferences": {},
    });
    Ok(serde_yaml::to_string(&config)?)
}
