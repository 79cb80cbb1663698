//! `mesh trust` end to end: the real binary, in a temporary directory.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn mesh(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = mesh(args);
    assert!(
        out.status.success(),
        "mesh {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(args: &[&str], code: i32) -> String {
    let out = mesh(args);
    assert_eq!(out.status.code(), Some(code), "mesh {args:?}: {out:?}");
    String::from_utf8(out.stderr).unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn root_issuer_leaf_inspect_and_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (west_root, west_issuer, web) = (d.join("west/root"), d.join("west/issuer"), d.join("web"));

    ok(&[
        "trust",
        "create-root",
        "--trust-domain",
        "west",
        "--out",
        p(&west_root),
    ]);
    assert_eq!(mode(&west_root.join("root.key")), 0o600);
    assert_eq!(mode(&west_root.join("root.crt")), 0o644);

    ok(&[
        "trust",
        "create-issuer",
        "--root",
        p(&west_root),
        "--out",
        p(&west_issuer),
    ]);
    assert_eq!(mode(&west_issuer.join("issuer.key")), 0o600);

    let said = ok(&[
        "trust",
        "issue",
        "--issuer",
        p(&west_issuer),
        "--identity",
        "spiffe://west/ns/default/sa/web",
        "--out",
        p(&web),
        "--lifetime",
        "2h",
    ]);
    assert!(
        said.contains("for spiffe://west/ns/default/sa/web"),
        "{said}"
    );
    assert_eq!(mode(&web.join("leaf.key")), 0o600);
    assert!(web.join("root.crt").exists());

    // The leaf file holds the leaf, then the issuer.
    let json = ok(&["trust", "inspect", p(&web.join("leaf.crt")), "-o", "json"]);
    let certs: serde_json::Value = serde_json::from_str(&json).unwrap();
    let certs = certs.as_array().unwrap();
    assert_eq!(certs.len(), 2);
    assert_eq!(certs[0]["uris"][0], "spiffe://west/ns/default/sa/web");
    assert_eq!(certs[0]["is_ca"], false);
    assert_eq!(certs[0]["key_type"], "ECDSA P-256");
    assert_eq!(certs[1]["uris"][0], "spiffe://west");
    assert_eq!(certs[1]["is_ca"], true);
    assert_eq!(certs[1]["path_len"], 0);
    assert_eq!(certs[0]["issuer"], certs[1]["subject"]);

    let table = ok(&["trust", "inspect", p(&west_root.join("root.crt"))]);
    assert!(table.contains("IDENTITY    spiffe://west"), "{table}");
    assert!(table.contains("CA          yes"), "{table}");
    assert!(table.contains("SHA-256"), "{table}");

    // A second cluster, and a bundle set of both.
    let east_root = d.join("east/root");
    ok(&[
        "trust",
        "create-root",
        "--trust-domain",
        "east",
        "--out",
        p(&east_root),
    ]);
    let spiffe = ok(&[
        "trust",
        "bundle",
        p(&west_root.join("root.crt")),
        p(&east_root.join("root.crt")),
        "--format",
        "spiffe",
    ]);
    let map: serde_json::Value = serde_json::from_str(&spiffe).unwrap();
    assert_eq!(map["west"]["keys"][0]["use"], "x509-svid");
    assert_eq!(map["east"]["keys"][0]["kty"], "EC");

    // Per-domain files, then read back both ways: a PEM directory, and a domain's SPIFFE JSON.
    let pem_dir = d.join("bundle-pem");
    let json_dir = d.join("bundle-json");
    ok(&[
        "trust",
        "bundle",
        p(&west_root.join("root.crt")),
        p(&east_root.join("root.crt")),
        "--out",
        p(&pem_dir),
    ]);
    ok(&[
        "trust",
        "bundle",
        p(&pem_dir),
        "--format",
        "spiffe",
        "--out",
        p(&json_dir),
    ]);
    assert!(pem_dir.join("west.pem").exists() && pem_dir.join("east.pem").exists());
    let merged = ok(&[
        "trust",
        "bundle",
        p(&west_root.join("root.crt")),
        "--domain",
        &format!("east={}", p(&json_dir.join("east.json"))),
        "--format",
        "pem",
    ]);
    assert!(
        merged.contains("# trust domain: east") && merged.contains("# trust domain: west"),
        "{merged}"
    );
    assert_eq!(merged.matches("BEGIN CERTIFICATE").count(), 2);
}

#[test]
fn refuses_to_overwrite_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    ok(&[
        "trust",
        "create-root",
        "--trust-domain",
        "west",
        "--out",
        p(&root),
    ]);
    let before = std::fs::read(root.join("root.key")).unwrap();

    let err = fails(
        &[
            "trust",
            "create-root",
            "--trust-domain",
            "west",
            "--out",
            p(&root),
        ],
        1,
    );
    assert!(
        err.contains("refusing to overwrite") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(root.join("root.key")).unwrap(),
        before,
        "the key must be untouched"
    );

    // --force replaces, and the key stays private even if its mode was loosened.
    std::fs::set_permissions(
        root.join("root.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    ok(&[
        "trust",
        "create-root",
        "--trust-domain",
        "west",
        "--out",
        p(&root),
        "--force",
    ]);
    assert_ne!(std::fs::read(root.join("root.key")).unwrap(), before);
    assert_eq!(mode(&root.join("root.key")), 0o600);
}

#[test]
fn bad_input_gets_a_message_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let err = fails(
        &[
            "trust",
            "create-root",
            "--trust-domain",
            "West",
            "--out",
            p(d),
        ],
        2,
    );
    assert!(err.contains("only lower-case letters"), "{err}");

    let err = fails(
        &[
            "trust",
            "issue",
            "--issuer",
            p(d),
            "--identity",
            "spiffe://west/ns/a?b",
            "--out",
            p(d),
        ],
        2,
    );
    assert!(err.contains("must not contain a query"), "{err}");

    let err = fails(
        &[
            "trust",
            "create-root",
            "--trust-domain",
            "west",
            "--out",
            p(d),
            "--lifetime",
            "10y",
        ],
        2,
    );
    assert!(err.contains("unknown unit"), "{err}");

    let west = d.join("west");
    ok(&[
        "trust",
        "create-root",
        "--trust-domain",
        "west",
        "--out",
        p(&west),
    ]);
    let west_issuer = d.join("west-issuer");
    ok(&[
        "trust",
        "create-issuer",
        "--root",
        p(&west),
        "--out",
        p(&west_issuer),
    ]);
    let err = fails(
        &[
            "trust",
            "issue",
            "--issuer",
            p(&west_issuer),
            "--identity",
            "spiffe://east/ns/a/sa/b",
            "--out",
            p(&d.join("x")),
        ],
        1,
    );
    assert!(
        err.contains("outside the issuer's trust domain west"),
        "{err}"
    );

    let err = fails(
        &[
            "trust",
            "create-issuer",
            "--root",
            p(&d.join("missing")),
            "--out",
            p(d),
        ],
        1,
    );
    assert!(err.contains("reading") && err.contains("root.crt"), "{err}");

    let garbage = d.join("garbage.crt");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = fails(&["trust", "inspect", p(&garbage)], 1);
    assert!(err.contains("certificate #0 is not valid X.509"), "{err}");

    let err = fails(&["trust", "bundle", "--format", "spiffe"], 1);
    assert!(err.contains("no inputs"), "{err}");
}

#[test]
fn prints_the_crds() {
    let yaml = ok(&["crds"]);
    assert!(yaml.contains("name: links.multicluster.mesh.io"), "{yaml}");
    assert!(
        yaml.contains("name: trafficsplits.split.smi-spec.io"),
        "{yaml}"
    );
}
