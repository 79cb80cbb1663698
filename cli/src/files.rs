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
/// refusal leaves nothing half-written. Each file goes to a temporary name beside its target and
/// is renamed into place only once every file is written, so a failure part way (a full disk,
/// say) never truncates an existing key.
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
    let mut staged: Vec<(PathBuf, &Path)> = Vec::new();
    for output in outputs {
        match stage(output) {
            Ok(temp) => staged.push((temp, &output.path)),
            Err(error) => {
                for (temp, _) in &staged {
                    let _ = fs::remove_file(temp);
                }
                return Err(error).with_context(|| format!("writing {}", output.path.display()));
            }
        }
    }
    for (temp, target) in &staged {
        fs::rename(temp, target)
            .with_context(|| format!("moving {} into place", target.display()))?;
    }
    Ok(())
}

// Writes the contents to a temporary file beside the target, with the target's mode.
fn stage(output: &Output) -> std::io::Result<PathBuf> {
    let mode = if output.secret { 0o600 } else { 0o644 };
    let name = output
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = output
        .path
        .with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temp)?;
    // A stale temp file from a crashed run keeps its old mode; set it explicitly.
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.write_all(output.contents.as_bytes())?;
    file.sync_all()?;
    Ok(temp)
}

/// Reads a file, naming it in the error.
pub fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}
