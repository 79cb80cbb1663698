//! Transparent redirection end to end: the rules from `mesh_proxy::init`, installed by real
//! iptables in throwaway network namespaces, and `mesh_proxy::orig_dst` reading the original
//! destination of what they redirect. Needs root, `ip` (iproute2) and iptables; without them it
//! says why on stderr and passes. Set `MESH_REDIRECT_TEST_REQUIRED=1` to make a skip a failure.
//!
//! Layout, entirely inside this machine (two namespaces joined by a veth pair; nothing is routed
//! out of them):
//!
//! ```text
//!  app ns: lo, v0 10.99.0.2/24 fd00:99::2/64    peer ns: lo, v1 10.99.0.1/24 fd00:99::1/64
//!    rules installed here; "proxy" listeners     "remote" servers on :80 and :81 answer "peer";
//!    on 4140 (outbound), 4143 (inbound),         a client dials the app ns on :8080 and :4191
//!    4191 (admin)
//! ```
//!
//! The outer test, [`redirect_in_network_namespaces`], builds the namespaces and re-executes this
//! test binary inside them (`ip netns exec NS <this binary> --exact <inner test> --ignored`),
//! with `MESH_REDIRECT_ROLE` saying which part to play. The inner tests are `#[ignore]`d and do
//! nothing without that variable. Namespaces are deleted by a drop guard, even on panic.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use mesh_proxy::init::{self, Backend, Family, InitConfig};
use mesh_proxy::orig_dst::original_destination;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ROLE: &str = "MESH_REDIRECT_ROLE";
const BACKEND: &str = "MESH_REDIRECT_BACKEND";
const PEER_NS: &str = "MESH_REDIRECT_PEER_NS";
const REQUIRED: &str = "MESH_REDIRECT_TEST_REQUIRED";
const PEER_READY: &str = "MESH-REDIRECT-PEER-READY";
// Printed by an inner test that ran to the end: libtest exits 0 when a filter matches no test,
// so success alone would not prove the inner test ran at all.
const DONE: &str = "MESH-REDIRECT-INNER-DONE";

/// A uid that is not ours (we are root), so our connections count as the application's.
const NOT_US: u32 = 65534;

// ---------------------------------------------------------------------------------------------
// Outer test: runs in the host namespace, only sets up and tears down.

#[test]
fn redirect_in_network_namespaces() {
    if let Some(reason) = skip_reason() {
        skip(&reason);
        return;
    }
    for backend in backends() {
        eprintln!("redirect test: backend {backend:?}");
        run_scenario(backend);
    }
}

fn skip(reason: &str) {
    if std::env::var_os(REQUIRED).is_some() {
        panic!("redirect test cannot run ({REQUIRED} is set): {reason}");
    }
    eprintln!("skipping redirect_in_network_namespaces: {reason}");
}

fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root (network namespaces and iptables need it)".into());
    }
    if !on_path("ip") {
        return Some("`ip` (iproute2) is not installed".into());
    }
    if backends().is_empty() {
        return Some("iptables is not installed (apt-get install -y iptables)".into());
    }
    None
}

/// Every backend installed here: both, on a Debian with the `iptables` package.
fn backends() -> Vec<Backend> {
    let explicit: Vec<Backend> = [Backend::Legacy, Backend::Nft]
        .into_iter()
        .filter(|b| on_path(b.restore_program(Family::Ipv4)))
        .collect();
    if !explicit.is_empty() {
        return explicit;
    }
    if on_path(Backend::Auto.restore_program(Family::Ipv4)) {
        return vec![Backend::Auto];
    }
    Vec::new()
}

fn on_path(program: &str) -> bool {
    Command::new(program)
        .arg("-V")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// The namespaces and the peer server; all removed on drop.
struct Sandbox {
    namespaces: Vec<String>,
    peer_server: Option<Child>,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(mut child) = self.peer_server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Deleting a namespace also deletes the veth end inside it.
        for ns in self.namespaces.drain(..).rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", &ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn run_scenario(backend: Backend) {
    let pid = std::process::id();
    let app = format!("mesh-rd{pid}-app");
    let peer = format!("mesh-rd{pid}-peer");
    let mut sandbox = Sandbox {
        namespaces: Vec::new(),
        peer_server: None,
    };
    for ns in [&app, &peer] {
        // A leftover from a crashed run with the same pid would make `add` fail.
        let _ = ip(&["netns", "del", ns]);
        if let Err(e) = ip(&["netns", "add", ns]) {
            skip(&format!("cannot create a network namespace: {e}"));
            return;
        }
        sandbox.namespaces.push(ns.clone());
    }
    let setup: &[&[&str]] = &[
        &["-n", &app, "link", "set", "lo", "up"],
        &["-n", &peer, "link", "set", "lo", "up"],
        // Created directly inside the namespaces: the host's interfaces are never touched.
        &[
            "-n", &app, "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", &peer,
        ],
        &["-n", &app, "addr", "add", "10.99.0.2/24", "dev", "v0"],
        // nodad: usable at once, no duplicate-address-detection wait.
        &[
            "-n",
            &app,
            "addr",
            "add",
            "fd00:99::2/64",
            "dev",
            "v0",
            "nodad",
        ],
        &["-n", &app, "link", "set", "v0", "up"],
        &["-n", &peer, "addr", "add", "10.99.0.1/24", "dev", "v1"],
        &[
            "-n",
            &peer,
            "addr",
            "add",
            "fd00:99::1/64",
            "dev",
            "v1",
            "nodad",
        ],
        &["-n", &peer, "link", "set", "v1", "up"],
    ];
    for args in setup {
        ip(args).unwrap();
    }

    // The remote servers, in the peer namespace; wait until they listen.
    let mut server = inner_command(&peer, "inner_peer_server", "peer-server", backend)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = server.stdout.take().unwrap();
    sandbox.peer_server = Some(server);
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains(PEER_READY) {
                let _ = ready_tx.send(());
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("peer server did not become ready");

    // Everything else happens inside the app namespace.
    let out = inner_command(&app, "inner_app", "app", backend)
        .env(PEER_NS, &peer)
        .output()
        .unwrap();
    assert_ran("app side", &out);
}

fn assert_ran(what: &str, out: &std::process::Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(DONE),
        "{what} failed ({:?}):\n--- stdout\n{stdout}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// This test binary, run as `role` inside `ns`.
fn inner_command(ns: &str, test: &str, role: &str, backend: Backend) -> Command {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(exe)
        .args([
            "--exact",
            test,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, role)
        .env(BACKEND, format!("{backend:?}"))
        .stdin(Stdio::null());
    cmd
}

fn role_is(expected: &str) -> bool {
    let role = std::env::var(ROLE).unwrap_or_default();
    if role != expected {
        eprintln!("not run: only redirect_in_network_namespaces runs this, with {ROLE}={expected}");
        return false;
    }
    true
}

fn backend() -> Backend {
    match std::env::var(BACKEND).as_deref() {
        Ok("Legacy") => Backend::Legacy,
        Ok("Nft") => Backend::Nft,
        _ => Backend::Auto,
    }
}

// ---------------------------------------------------------------------------------------------
// Inner tests: run only inside the namespaces.

const DEADLINE: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

async fn reply_and_close(mut stream: TcpStream, reply: &str) {
    stream.write_all(reply.as_bytes()).await.unwrap();
    stream.shutdown().await.unwrap();
}

async fn connect_and_read(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.unwrap();
    reply
}

/// The remote side: answers "peer" to anything, until killed.
#[tokio::test]
#[ignore = "run inside a network namespace by redirect_in_network_namespaces"]
async fn inner_peer_server() {
    if !role_is("peer-server") {
        return;
    }
    for addr in ["10.99.0.1:80", "10.99.0.1:81", "[fd00:99::1]:80"] {
        let listener = TcpListener::bind(addr).await.unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(reply_and_close(stream, "peer"));
            }
        });
    }
    println!("{PEER_READY}");
    // Serve until the outer test kills this process.
    std::future::pending::<()>().await;
}

/// A client outside the app namespace, dialling into it: checks inbound redirection.
#[tokio::test]
#[ignore = "run inside a network namespace by redirect_in_network_namespaces"]
async fn inner_peer_client() {
    if !role_is("peer-client") {
        return;
    }
    let app = within(
        "inbound to :8080",
        connect_and_read("10.99.0.2:8080".parse().unwrap()),
    )
    .await;
    assert_eq!(
        app, "inbound",
        "10.99.0.2:8080 should reach the inbound proxy"
    );
    let admin = within(
        "inbound to :4191",
        connect_and_read("10.99.0.2:4191".parse().unwrap()),
    )
    .await;
    assert_eq!(
        admin, "admin",
        "the admin port is skipped: it should be reached directly"
    );
    println!("{DONE}");
}

/// The application and the proxy, in the namespace with the rules.
#[tokio::test]
#[ignore = "run inside a network namespace by redirect_in_network_namespaces"]
async fn inner_app() {
    if !role_is("app") {
        return;
    }
    let backend = backend();
    // Dual-stack listeners: redirected IPv4 connections arrive IPv4-mapped, which also exercises
    // that path of original_destination.
    let outbound = TcpListener::bind("[::]:4140").await.unwrap();
    let inbound = TcpListener::bind("[::]:4143").await.unwrap();
    let admin = TcpListener::bind("[::]:4191").await.unwrap();

    let mut cfg = InitConfig::new(NOT_US);
    cfg.skip_outbound_ports = vec![81];
    cfg.ipv6 = true;

    // Idempotence: the second apply leaves the table exactly as the first did, and every rule we
    // rendered is in the kernel exactly once.
    init::apply(&cfg, backend).unwrap();
    let first = saved(backend);
    init::apply(&cfg, backend).unwrap();
    assert_eq!(first, saved(backend), "applying twice changed the rules");
    for family in [Family::Ipv4, Family::Ipv6] {
        let table = &first[family_index(family)];
        for rule in init::rules(&cfg, family).unwrap() {
            let line = rule.to_string();
            let count = table.iter().filter(|l| **l == line).count();
            assert_eq!(
                count, 1,
                "{family:?}: {line:?} found {count} times in\n{table:#?}"
            );
        }
    }

    // Outbound, IPv4 and IPv6: the app (root, not the proxy uid) dials a remote address and
    // lands on 4140, which learns where it was going.
    for dst in ["10.99.0.1:80", "[fd00:99::1]:80"] {
        let dst: SocketAddr = dst.parse().unwrap();
        let client = tokio::spawn(connect_and_read(dst));
        let (stream, _) = within(&format!("redirected {dst} on 4140"), outbound.accept())
            .await
            .unwrap();
        let orig = original_destination(&stream);
        reply_and_close(stream, "proxy").await;
        assert_eq!(orig.unwrap(), dst);
        assert_eq!(within("client reply", client).await.unwrap(), "proxy");
    }

    // A skipped outbound port goes straight to the peer.
    let direct = within(
        "skipped port 81",
        connect_and_read("10.99.0.1:81".parse().unwrap()),
    )
    .await;
    assert_eq!(direct, "peer", "port 81 is in skip_outbound_ports");

    // Dialling the proxy's port directly (loopback: not redirected) is reported as such.
    let client = tokio::spawn(connect_and_read("127.0.0.1:4140".parse().unwrap()));
    let (stream, _) = within("direct to 4140", outbound.accept()).await.unwrap();
    let err = original_destination(&stream).unwrap_err();
    assert!(err.is_not_redirected(), "unexpected: {err:?}");
    reply_and_close(stream, "direct").await;
    assert_eq!(within("direct reply", client).await.unwrap(), "direct");

    // Inbound: a client in the peer namespace dials 10.99.0.2:8080 (redirected to 4143) and
    // 10.99.0.2:4191 (skipped: reaches the admin listener itself).
    let peer_ns = std::env::var(PEER_NS).unwrap();
    let peer_client = tokio::task::spawn_blocking(move || {
        inner_command(&peer_ns, "inner_peer_client", "peer-client", backend)
            .output()
            .unwrap()
    });
    let (stream, _) = within("redirected inbound on 4143", inbound.accept())
        .await
        .unwrap();
    let orig = original_destination(&stream);
    reply_and_close(stream, "inbound").await;
    assert_eq!(
        orig.unwrap(),
        "10.99.0.2:8080".parse::<SocketAddr>().unwrap()
    );
    let (stream, _) = within("direct inbound on 4191", admin.accept())
        .await
        .unwrap();
    reply_and_close(stream, "admin").await;
    let out = within("peer client", peer_client).await.unwrap();
    assert_ran("peer client", &out);

    // Now we are the proxy: with proxy_uid = our uid, our connections leave the pod untouched.
    // Re-applying a changed config replaces the rules instead of adding to them.
    cfg.proxy_uid = Some(0);
    init::apply(&cfg, backend).unwrap();
    let after = saved(backend);
    assert!(
        after[0].contains(&"-A MESH_OUTPUT -m owner --uid-owner 0 -j RETURN".to_owned())
            && !after[0]
                .iter()
                .any(|l| l.contains(&format!("--uid-owner {NOT_US}"))),
        "{after:#?}"
    );
    for family in [Family::Ipv4, Family::Ipv6] {
        let table = &after[family_index(family)];
        let hooks = table
            .iter()
            .filter(|l| l.ends_with("-j MESH_OUTPUT"))
            .count();
        assert_eq!(hooks, 1, "{family:?}: {table:#?}");
    }
    for dst in ["10.99.0.1:80", "[fd00:99::1]:80"] {
        let reply = within(
            &format!("proxy uid to {dst}"),
            connect_and_read(dst.parse().unwrap()),
        )
        .await;
        assert_eq!(
            reply, "peer",
            "the proxy's own connection to {dst} was redirected"
        );
    }
    println!("{DONE}");
}

fn family_index(family: Family) -> usize {
    match family {
        Family::Ipv4 => 0,
        Family::Ipv6 => 1,
    }
}

/// The `nat` table of both families, as lines, without comments and counters.
fn saved(backend: Backend) -> [Vec<String>; 2] {
    [Family::Ipv4, Family::Ipv6].map(|family| {
        let program = backend.save_program(family);
        let out = Command::new(program).args(["-t", "nat"]).output().unwrap();
        assert!(out.status.success(), "{program} failed");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| match l.split_once(" [") {
                // ":CHAIN POLICY [packets:bytes]": counters move with traffic.
                Some((decl, _)) if l.starts_with(':') => decl.to_owned(),
                _ => l.to_owned(),
            })
            .collect()
    })
}
