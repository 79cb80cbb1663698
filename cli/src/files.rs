//! Writing trust material: never over an existing file without `--force`, keys with mode 0600.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// One file to write.
#[derive(Debug)]
pub struct Output {
    pub path: PathBuf,
    pub contents: String,
    /// Private keys: readable by the owner only.
    pub secret: bool,
}

impl Output {
    pub fn public(path: PathBuf, contents: String) -> Self {
        Self {
            path,
            contents,
            secret: false,
        }
    }

    pub fn secret(path: PathBuf, contents: String) -> Self {
        Self {
            path,
            contents,
            secret: true,
        }
    }
}

/// Writes all outputs into `dir` (created if missing), checking every target first so that a
/// refusal leaves nothing half-written.
pub fn write_all(dir: &Path, outputs: &[Output], force: bool) -> anyhow::Result<()> {
    if !force {
        let existing: Vec<String> = outputs
            .iter()
            .filter(|o| o.path.exists())
            .map(|o| o.path.display().to_string())
            .collect();
        if !existing.is_empty() {
            bail!(
                "refusing to overwrite {}; pass --force to replace, or choose another --out",
                existing.join(", ")
            );
        }
    }
    fs::create_dir_all(dir).with_context(|| format!("creating directory {}", dir.display()))?;
    for output in outputs {
        write_one(output, force).with_context(|| format!("writing {}", output.path.display()))?;
    }
    Ok(())
}

fn write_one(output: &Output, force: bool) -> std::io::Result<()> {
    let mode = if output.secret { 0o600 } else { 0o644 };
    let mut options = fs::OpenOptions::new();
    options.write(true).mode(mode);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(&output.path)?;
    // The mode above applies only to new files; an overwritten key must not keep looser bits.
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.write_all(output.contents.as_bytes())?;
    file.sync_all()
}

/// Reads a file, naming it in the error.
pub fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}
