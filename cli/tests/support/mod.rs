//! What the `mesh` command's tests and benches share: the binary, processes that stop with the
//! test, trust material made by `mesh trust`, a `mesh devcluster` process, free ports and DNS
//! questions. Each user takes part of it.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};

/// The `mesh` binary of this build.
pub const MESH: &str = env!("CARGO_BIN_EXE_mesh");

/// A child process, killed and reaped when dropped.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `mesh args` and requires it to succeed.
pub fn mesh_ok(args: &[&str]) {
    let status = Command::new(MESH)
        .args(args)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "mesh {args:?}");
}

/// `mesh trust create-root` for `domain` into `dir/<domain>/root`; the directory.
pub fn create_root(dir: &Path, domain: &str) -> PathBuf {
    let root = dir.join(domain).join("root");
    mesh_ok(&[
        "trust",
        "create-root",
        "--trust-domain",
        domain,
        "--out",
        root.to_str().unwrap(),
    ]);
    root
}

/// A root and an issuer for `domain` (`mesh trust create-root` and `create-issuer`); the
/// issuer's directory, as `mesh controller --issuer-dir` takes it.
pub fn create_issuer(dir: &Path, domain: &str) -> PathBuf {
    let root = create_root(dir, domain);
    let issuer = dir.join(domain).join("issuer");
    mesh_ok(&[
        "trust",
        "create-issuer",
        "--root",
        root.to_str().unwrap(),
        "--out",
        issuer.to_str().unwrap(),
    ]);
    issuer
}

/// A `mesh devcluster` process named `name`, and the kubeconfig it wrote into `dir`.
pub fn devcluster(dir: &Path, name: &str) -> (Process, PathBuf) {
    let kubeconfig = dir.join(format!("{name}.kubeconfig"));
    let child = Command::new(MESH)
        .args(["devcluster", "--listen", "127.0.0.1:0", "--name", name])
        .arg("--kubeconfig-out")
        .arg(&kubeconfig)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let process = Process(child);
    for _ in 0..600 {
        if kubeconfig.exists() {
            return (process, kubeconfig);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the dev cluster {name} never wrote its kubeconfig");
}

/// A loopback port free for both TCP and UDP (DNS takes both).
pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Asks the DNS server on `port` for `name`'s A records over UDP; the answer, if one came.
pub fn dns_a(port: u16, name: &str) -> Option<Message> {
    let socket = UdpSocket::bind("127.0.0.1:0").ok()?;
    socket.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut query = Message::new();
    query
        .set_id(0x4242)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).ok()?, RecordType::A));
    socket
        .send_to(&query.to_vec().ok()?, ("127.0.0.1", port))
        .ok()?;
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).ok()?;
    Message::from_vec(&buf[..n])
        .ok()
        .filter(|m| m.id() == 0x4242)
}
