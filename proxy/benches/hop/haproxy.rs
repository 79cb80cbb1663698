//! The reference: HAProxy as a two-hop pair, shaped like the mesh pair.
//!
//! ```text
//! load -> haproxy A (HTTP/1.1, keep-alive) ==h2 over mTLS 1.3==> haproxy B -> backend (HTTP/1.1)
//! load -> haproxy A (TCP) ==mTLS 1.3==> haproxy B -> sink
//! ```
//!
//! Both run in HTTP mode for HTTP (keep-alive on both sides, `http-reuse always` towards the
//! next hop) and TCP mode for the opaque test. The hop between them is mutual TLS 1.3 with the
//! same ECDSA P-256 chains as the mesh pair, each side trusting only the other's root, and
//! HTTP/2 on it, as the mesh carries HTTP/1 on multiplexed HTTP/2 between proxies. Each
//! HAProxy runs in the foreground (`-db`) with its default thread count (one per core), so its
//! process id carries all of its CPU time.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::pki::PkiFiles;
use crate::process::{PathUnderTest, ProxyProcess, SetupError, accepts, free_port};
use mesh_test_support::backends::Backends;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Where HAProxy lives when it is not on `PATH` (Debian puts it in `/usr/sbin`).
const SBIN_DIRS: [&str; 2] = ["/usr/sbin", "/usr/local/sbin"];

/// The HAProxy binary: `explicit` if given, else `haproxy` on `PATH` or in an sbin directory.
pub fn find(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = explicit {
        return path.is_file().then(|| path.to_owned());
    }
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs
        .into_iter()
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join("haproxy"))
        .find(|candidate| candidate.is_file())
}

/// The first line of `haproxy -v`, e.g. `HAProxy version 2.6.12-1+deb12u4 ...`.
pub fn version(bin: &Path) -> String {
    Command::new(bin)
        .arg("-v")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "HAProxy (version unknown)".to_owned())
}

/// Writes both configurations, starts B then A, and waits until every listener accepts.
pub async fn start(
    bin: &Path,
    dir: &Path,
    pki: &PkiFiles,
    backends: &Backends,
) -> Result<PathUnderTest, SetupError> {
    let a_http = free_port(LOOPBACK)?;
    let a_tcp = free_port(LOOPBACK)?;
    let b_http = free_port(LOOPBACK)?;
    let b_tcp = free_port(LOOPBACK)?;

    let b_config = dir.join("haproxy-b.cfg");
    write(&b_config, &config_b(pki, b_http, b_tcp, backends))?;
    let mut b = ProxyProcess::spawn(
        "haproxy B",
        command(bin, &b_config),
        &dir.join("haproxy-b.log"),
    )?;

    let a_config = dir.join("haproxy-a.cfg");
    write(&a_config, &config_a(pki, a_http, a_tcp, b_http, b_tcp))?;
    let mut a = ProxyProcess::spawn(
        "haproxy A",
        command(bin, &a_config),
        &dir.join("haproxy-a.log"),
    )?;

    b.wait_ready("its HTTP listener", || accepts(b_http))
        .await?;
    b.wait_ready("its TCP listener", || accepts(b_tcp)).await?;
    a.wait_ready("its HTTP listener", || accepts(a_http))
        .await?;
    a.wait_ready("its TCP listener", || accepts(a_tcp)).await?;

    Ok(PathUnderTest {
        http: a_http,
        tcp: a_tcp,
        processes: vec![a, b],
        hop: "HTTP/1.1 keep-alive in and out; h2 (HTTP) and TCP over mTLS 1.3 between the \
              HAProxies, ECDSA P-256, each trusting the other's root only"
            .to_owned(),
    })
}

fn command(bin: &Path, config: &Path) -> Command {
    let mut command = Command::new(bin);
    command.arg("-db").arg("-f").arg(config);
    command
}

fn write(path: &Path, body: &str) -> Result<(), SetupError> {
    std::fs::write(path, body).map_err(SetupError::io(format!("write {}", path.display())))
}

const COMMON: &str = "\
global
    maxconn 4096
    ssl-server-verify required

defaults
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
";

/// A: plain listeners for the load, TLS client towards B.
fn config_a(
    pki: &PkiFiles,
    http: SocketAddr,
    tcp: SocketAddr,
    b_http: SocketAddr,
    b_tcp: SocketAddr,
) -> String {
    let tls = format!(
        "ssl verify required ca-file {} crt {} ssl-min-ver TLSv1.3",
        pki.east_root.display(),
        pki.west_combined.display()
    );
    format!(
        "{COMMON}
frontend http_in
    mode http
    bind {http}
    default_backend hop

backend hop
    mode http
    http-reuse always
    server b {b_http} {tls} alpn h2

listen tcp_in
    mode tcp
    bind {tcp}
    server b {b_tcp} {tls}
"
    )
}

/// B: TLS listeners requiring A's certificate, plain towards the backends.
fn config_b(pki: &PkiFiles, http: SocketAddr, tcp: SocketAddr, backends: &Backends) -> String {
    let tls = format!(
        "ssl crt {} ca-file {} verify required ssl-min-ver TLSv1.3",
        pki.east_combined.display(),
        pki.west_root.display()
    );
    format!(
        "{COMMON}
frontend http_in
    mode http
    bind {http} {tls} alpn h2,http/1.1
    default_backend app

backend app
    mode http
    http-reuse always
    server app {app}

listen tcp_in
    mode tcp
    bind {tcp} {tls}
    server sink {sink}
",
        app = backends.http,
        sink = backends.sink,
    )
}
