//! Credentials for the two hops, written to files the proxies read: two trust domains (`west`
//! and `east`), each with its own root and issuer, a leaf per side, and the roots of both.
//!
//! The same credentials serve the mesh pair and the HAProxy pair, so both run the same chain
//! shape (ECDSA P-256 leaf, issuer, root) on their TLS hop:
//! - mesh layout: `<side>/leaf.crt` (leaf then issuer), `<side>/leaf.key`, and the trust bundle
//!   directory `trust/<domain>.pem`;
//! - HAProxy layout: `<side>.pem` (leaf, issuer, then the key, as `crt` wants it) and the same
//!   `trust/<domain>.pem` files as `ca-file`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use mesh_test_support::pki::Domain;
use mesh_trust::TrustBundleSet;
use mesh_trust::pem::{encode_certificates, encode_private_key};
use mesh_trust::tls::WorkloadCredentials;

use crate::process::SetupError;

/// The calling side's service account, in `west`.
const CLIENT_SA: &str = "client";
/// The called side's service account, in `east`.
pub const SERVER_SA: &str = "web";

/// Paths of the written credentials.
#[derive(Debug, Clone)]
pub struct PkiFiles {
    /// Identity directories (`leaf.crt`, `leaf.key`).
    pub west_identity: PathBuf,
    pub east_identity: PathBuf,
    /// `<domain>.pem` for both domains.
    pub trust_dir: PathBuf,
    /// Chain and key in one file each.
    pub west_combined: PathBuf,
    pub east_combined: PathBuf,
    pub west_root: PathBuf,
    pub east_root: PathBuf,
    /// `spiffe://east/ns/default/sa/web`.
    pub east_id: String,
}

/// Creates both domains and writes everything under `dir`.
pub fn write(dir: &Path) -> Result<PkiFiles, SetupError> {
    let west = Domain::new("west");
    let east = Domain::new("east");
    let west_creds = west.creds(CLIENT_SA);
    let east_creds = east.creds(SERVER_SA);

    let west_identity = dir.join("west");
    let east_identity = dir.join("east");
    write_identity(&west_identity, &west_creds)?;
    write_identity(&east_identity, &east_creds)?;

    let trust_dir = dir.join("trust");
    create_dir(&trust_dir)?;
    let mut bundles = TrustBundleSet::new();
    bundles.merge(&west.bundle());
    bundles.merge(&east.bundle());
    bundles
        .save_pem_dir(&trust_dir)
        .map_err(|e| SetupError::Invalid {
            what: format!("write the trust bundle to {}: {e}", trust_dir.display()),
        })?;

    let west_combined = dir.join("west.pem");
    let east_combined = dir.join("east.pem");
    write_secret(&west_combined, &combined_pem(&west_creds))?;
    write_secret(&east_combined, &combined_pem(&east_creds))?;

    Ok(PkiFiles {
        west_identity,
        east_identity,
        west_root: trust_dir.join(format!("{}.pem", west.td)),
        east_root: trust_dir.join(format!("{}.pem", east.td)),
        trust_dir,
        west_combined,
        east_combined,
        east_id: east.id(SERVER_SA).as_str().to_owned(),
    })
}

fn write_identity(dir: &Path, creds: &WorkloadCredentials) -> Result<(), SetupError> {
    create_dir(dir)?;
    write_file(
        &dir.join("leaf.crt"),
        &encode_certificates(creds.chain.iter()),
    )?;
    write_secret(&dir.join("leaf.key"), &encode_private_key(&creds.key))
}

fn combined_pem(creds: &WorkloadCredentials) -> String {
    encode_certificates(creds.chain.iter()) + &encode_private_key(&creds.key)
}

fn create_dir(dir: &Path) -> Result<(), SetupError> {
    std::fs::create_dir_all(dir).map_err(SetupError::io(format!("create {}", dir.display())))
}

fn write_file(path: &Path, body: &str) -> Result<(), SetupError> {
    std::fs::write(path, body).map_err(SetupError::io(format!("write {}", path.display())))
}

/// Keys are written owner-only, as a workload's would be.
fn write_secret(path: &Path, body: &str) -> Result<(), SetupError> {
    write_file(path, body)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(SetupError::io(format!("restrict {}", path.display())))
}
