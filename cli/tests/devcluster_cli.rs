//! `mesh devcluster` as a user runs it: it writes a kubeconfig and answers the Kubernetes API.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn devcluster_writes_a_kubeconfig_and_answers_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("dev.kubeconfig");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args([
            "devcluster",
            "--listen",
            "127.0.0.1:0",
            "--plain-http",
            "--kubeconfig-out",
        ])
        .arg(&kubeconfig)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Up to 20 s for the file to appear.
    for _ in 0..400 {
        if kubeconfig.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = std::fs::read_to_string(&kubeconfig).unwrap();
    let server = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .unwrap()
        .trim_matches('"')
        .trim_start_matches("http://")
        .to_owned();
    let token = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .unwrap()
        .trim_matches('"')
        .to_owned();

    let get = |path: &str, token: Option<&str>| {
        let mut conn = TcpStream::connect(&server).unwrap();
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(
            conn,
            "GET {path} HTTP/1.1\r\nHost: {server}\r\n{auth}Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).unwrap();
        answer
    };
    let namespaces = get("/api/v1/namespaces", Some(&token));
    assert!(namespaces.starts_with("HTTP/1.1 200"), "{namespaces}");
    assert!(namespaces.contains("\"default\""), "{namespaces}");
    let refused = get("/api/v1/namespaces", None);
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");

    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn devcluster_help_says_what_it_is_for() {
    let out = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(["devcluster", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("Kubernetes-API-compatible"), "{help}");
    assert!(help.contains("--kubeconfig-out"), "{help}");
}
