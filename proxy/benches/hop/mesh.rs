//! The mesh pair: two `mesh-proxy run` processes on one machine, meshed over mTLS.
//!
//! ```text
//! load -> west explicit listener (HTTP/1.1) -> west ==mTLS==> east inbound -> backend
//! ```
//!
//! West has two explicit listeners (`--outbound-map`): one for the HTTP service
//! `web.default.svc.cluster.local:80` (protocol hint `http`) and one for the opaque service
//! `sink.default.svc.cluster.local:9000` (hint `opaque`). A static discovery file sends both to
//! east: each endpoint is `<east ip>:<backend port>` with east's identity. West connects to the
//! endpoint's IP at the inbound port (4143) and names the backend port in the transport header;
//! east forwards to `--app-ip` at that port. Both proxies share a machine, so east lives on a
//! loopback address of its own (`127.0.0.2`, or the next one whose port 4143 is free) where the
//! backends listen too.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use mesh_proxy::discovery::StaticDiscovery;
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::pki::PkiFiles;
use crate::process::{PathUnderTest, ProxyProcess, SetupError, accepts, free_port};
use mesh_test_support::backends::Backends;

/// The HTTP service the load is sent to, and the `Host` it carries on every path.
pub const HTTP_AUTHORITY: &str = "web.default.svc.cluster.local:80";
pub const HTTP_HOST: &str = "web.default.svc.cluster.local";
/// The opaque service in front of the sink.
const TCP_AUTHORITY: &str = "sink.default.svc.cluster.local:9000";

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const ADMIN_TIMEOUT: Duration = Duration::from_millis(500);

/// A loopback address other than 127.0.0.1 whose inbound port (4143) is free: east's address.
pub fn pick_east_ip() -> Result<IpAddr, SetupError> {
    let port = mesh_api::ports::PROXY_INBOUND;
    (2..=32u8)
        .map(|last| IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
        .find(|ip| std::net::TcpListener::bind((*ip, port)).is_ok())
        .ok_or_else(|| SetupError::Invalid {
            what: format!("port {port} is taken on 127.0.0.2 to 127.0.0.32; free one for east"),
        })
}

/// Writes the discovery file, starts east then west, and waits until both are ready.
pub async fn start(
    bin: &Path,
    dir: &Path,
    pki: &PkiFiles,
    backends: &Backends,
) -> Result<PathUnderTest, SetupError> {
    let east_ip = backends.http.ip();
    let discovery = dir.join("discovery.json");
    write_discovery(&discovery, pki, backends)?;

    let east_admin = free_port(LOOPBACK)?;
    let mut east = ProxyProcess::spawn(
        "mesh-proxy east",
        run_command(
            bin,
            &pki.east_identity,
            &pki.trust_dir,
            &discovery,
            [
                (
                    "--inbound-addr",
                    SocketAddr::new(east_ip, mesh_api::ports::PROXY_INBOUND).to_string(),
                ),
                ("--outbound-addr", free_port(east_ip)?.to_string()),
                ("--admin-addr", east_admin.to_string()),
                ("--tap-addr", free_port(LOOPBACK)?.to_string()),
                ("--app-ip", east_ip.to_string()),
            ],
        ),
        &dir.join("east.log"),
    )?;

    let west_admin = free_port(LOOPBACK)?;
    let http = free_port(LOOPBACK)?;
    let tcp = free_port(LOOPBACK)?;
    let mut west = ProxyProcess::spawn(
        "mesh-proxy west",
        run_command(
            bin,
            &pki.west_identity,
            &pki.trust_dir,
            &discovery,
            [
                ("--inbound-addr", free_port(LOOPBACK)?.to_string()),
                ("--outbound-addr", free_port(LOOPBACK)?.to_string()),
                ("--admin-addr", west_admin.to_string()),
                ("--tap-addr", free_port(LOOPBACK)?.to_string()),
                ("--outbound-map", format!("{http}={HTTP_AUTHORITY}")),
                ("--outbound-map", format!("{tcp}={TCP_AUTHORITY}")),
            ],
        ),
        &dir.join("west.log"),
    )?;

    east.wait_ready("GET /ready on the admin server", || admin_ready(east_admin))
        .await?;
    west.wait_ready("GET /ready on the admin server", || admin_ready(west_admin))
        .await?;
    west.wait_ready("the HTTP explicit listener", || accepts(http))
        .await?;
    west.wait_ready("the opaque explicit listener", || accepts(tcp))
        .await?;

    Ok(PathUnderTest {
        http,
        tcp,
        processes: vec![west, east],
        hop: "HTTP/1.1 in and out; mesh.h2 (HTTP) and mesh.opaque (TCP) over mTLS 1.3 between \
              the proxies, ECDSA P-256, SPIFFE identities"
            .to_owned(),
    })
}

fn run_command<const N: usize>(
    bin: &Path,
    identity: &Path,
    trust: &Path,
    discovery: &Path,
    flags: [(&str, String); N],
) -> Command {
    let mut command = Command::new(bin);
    command
        .arg("run")
        .arg("--identity-dir")
        .arg(identity)
        .arg("--trust-bundle")
        .arg(trust)
        .arg("--discovery-file")
        .arg(discovery);
    for (flag, value) in flags {
        command.arg(flag).arg(value);
    }
    // Warnings and errors only: the figures are about the data path, not logging.
    command.env("RUST_LOG", "warn");
    command
}

/// Both services, each with one endpoint: the backend behind east.
fn write_discovery(path: &Path, pki: &PkiFiles, backends: &Backends) -> Result<(), SetupError> {
    let endpoint = |addr: SocketAddr| serde_json::json!([{ "addr": addr.to_string(), "identity": pki.east_id }]);
    let document = serde_json::json!({
        HTTP_AUTHORITY: { "protocol_hint": "http", "endpoints": endpoint(backends.http) },
        TCP_AUTHORITY: { "protocol_hint": "opaque", "endpoints": endpoint(backends.sink) },
    });
    let json = serde_json::to_string_pretty(&document).map_err(|e| SetupError::Invalid {
        what: format!("encode the discovery file: {e}"),
    })?;
    // The proxies would refuse a bad file too, but saying so here names the bench as the culprit.
    StaticDiscovery::from_json(path, &json).map_err(|e| SetupError::Invalid {
        what: e.to_string(),
    })?;
    std::fs::write(path, json).map_err(SetupError::io(format!("write {}", path.display())))
}

/// True once `GET /ready` on the admin server answers 200.
async fn admin_ready(admin: SocketAddr) -> bool {
    timeout(ADMIN_TIMEOUT, get_status(admin, "/ready"))
        .await
        .is_ok_and(|status| status == Some(StatusCode::OK))
}

async fn get_status(addr: SocketAddr, path: &str) -> Option<StatusCode> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    let request = Request::get(path)
        .header(header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .ok()?;
    Some(sender.send_request(request).await.ok()?.status())
}
