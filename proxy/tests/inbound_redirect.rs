//! The inbound listener forwards traffic that iptables redirected to it, unmeshed, to the
//! application at the port the client was dialling. Needs root, `ip` (iproute2) and `iptables`,
//! for a throwaway network namespace with one NAT rule; without them it says why on stderr and
//! passes. Set `MESH_REDIRECT_TEST_REQUIRED=1` to make a skip a failure.
//!
//! Inside the namespace, a client dials `127.0.0.2:8080`; the rule
//! `-t nat -A OUTPUT -p tcp -d 127.0.0.2 -j REDIRECT --to-ports 4143` sends the connection to the
//! inbound listener instead, which finds the original destination and forwards to the
//! application on `127.0.0.1:8080` (a destination the rule does not match, so the proxy's own
//! connection is not redirected again). The outer test creates the namespace and re-executes
//! this binary inside it (`ip netns exec`); the inner test is `#[ignore]`d and does nothing
//! without `MESH_REDIRECT_ROLE`.
#![allow(clippy::unwrap_used)]

#[path = "support/mesh_pki.rs"]
mod pki;

use std::process::{Command, Stdio};
use std::time::Duration;

use mesh_proxy::drain;
use mesh_proxy::tcp::{EventHook, InboundConfig, InboundError, InboundEvent, serve_inbound};
use pki::Domain;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const ROLE: &str = "MESH_REDIRECT_ROLE";
const REQUIRED: &str = "MESH_REDIRECT_TEST_REQUIRED";
// Printed by the inner test when it ran to the end: libtest exits 0 when a filter matches no
// test, so success alone would not prove it ran.
const DONE: &str = "MESH-INBOUND-REDIRECT-DONE";

#[test]
fn redirected_plain_traffic_reaches_the_app_at_its_original_port() {
    if let Some(reason) = skip_reason() {
        if std::env::var_os(REQUIRED).is_some() {
            panic!("cannot run ({REQUIRED} is set): {reason}");
        }
        eprintln!("skipping: {reason}");
        return;
    }
    let ns = format!("mesh-inrd{}", std::process::id());
    let _ = ip(&["netns", "del", &ns]);
    ip(&["netns", "add", &ns]).unwrap();
    let _guard = Namespace(ns.clone());
    ip(&["-n", &ns, "link", "set", "lo", "up"]).unwrap();

    let exe = std::env::current_exe().unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(exe)
        .args([
            "--exact",
            "inner_forward",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, "inner")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(DONE),
        "inner test failed ({:?}):\n--- stdout\n{stdout}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root (network namespaces and iptables need it)".into());
    }
    for program in ["ip", "iptables"] {
        let found = Command::new(program)
            .arg("-V")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Some(format!("`{program}` is not installed"));
        }
    }
    None
}

/// Deletes the namespace (and its rules) on drop, even on panic.
struct Namespace(String);

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.0]);
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program} {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

const PATIENCE: Duration = Duration::from_secs(10);

#[tokio::test]
#[ignore = "run inside a network namespace by redirected_plain_traffic_reaches_the_app_at_its_original_port"]
async fn inner_forward() {
    if std::env::var(ROLE).as_deref() != Ok("inner") {
        eprintln!("not run: only the outer test runs this, inside its namespace");
        return;
    }
    run(
        "iptables",
        &[
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            "127.0.0.2",
            "-j",
            "REDIRECT",
            "--to-ports",
            "4143",
        ],
    )
    .unwrap();

    // The application: answers with what it got, prefixed, then closes.
    let app = TcpListener::bind("127.0.0.1:8080").await.unwrap();
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = app.accept().await.unwrap();
            tokio::spawn(async move {
                let mut got = Vec::new();
                conn.read_to_end(&mut got).await.unwrap();
                conn.write_all(b"app got: ").await.unwrap();
                conn.write_all(&got).await.unwrap();
                conn.shutdown().await.unwrap();
            });
        }
    });

    let west = Domain::new("west");
    let bundles = pki::bundles(&[&west]);
    let mut config = InboundConfig::new(pki::inbound_tls(&bundles, west.creds("app")));
    config.detect_timeout = Duration::from_millis(200);
    let (tx, mut events) = mpsc::unbounded_channel();
    config.events = Some(EventHook::new(move |event| {
        let _ = tx.send(event);
    }));
    let listener = TcpListener::bind("0.0.0.0:4143").await.unwrap();
    let (_drain, watch) = drain::channel();
    tokio::spawn(serve_inbound(listener, config, watch));

    // A plain client of a TCP protocol: forwarded as opaque bytes, the ones detection read
    // included. (Plain HTTP is served as HTTP instead; `tests/transparent.rs` covers it.)
    let request = b"hello, not HTTP\n";
    let mut client = TcpStream::connect("127.0.0.2:8080").await.unwrap();
    client.write_all(request).await.unwrap();
    client.shutdown().await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(PATIENCE, client.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply, [&b"app got: "[..], request].concat());

    let event = tokio::time::timeout(PATIENCE, events.recv())
        .await
        .unwrap()
        .unwrap();
    match event {
        InboundEvent::Forwarded { original, app, .. } => {
            assert_eq!(original, "127.0.0.2:8080".parse().unwrap());
            assert_eq!(app, "127.0.0.1:8080".parse().unwrap());
        }
        other => panic!("expected Forwarded, got {other:?}"),
    }

    // A redirect towards one of the proxy's own ports (admin) is refused, not forwarded.
    let mut admin = TcpStream::connect("127.0.0.2:4191").await.unwrap();
    admin
        .write_all(b"POST /shutdown HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut nothing = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, admin.read_to_end(&mut nothing))
        .await
        .unwrap();
    assert!(nothing.is_empty());
    loop {
        let event = tokio::time::timeout(PATIENCE, events.recv())
            .await
            .unwrap()
            .unwrap();
        if let InboundEvent::Closed {
            result: Err(error), ..
        } = event
        {
            assert!(
                matches!(error, InboundError::Loop { port: 4191 }),
                "{error}"
            );
            break;
        }
    }
    println!("{DONE}");
}
