//! File-tree helpers: copy a tree with `cp -a` (hard to beat on tmpfs and keeps owners),
//! remove a tree if present, and the apparent size of a tree.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Copies `src` to `dst` (which must not exist) with `cp -a`.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let status = Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dst)
        .status()
        .context("run cp")?;
    if !status.success() {
        bail!("cp -a {} {}: {status}", src.display(), dst.display());
    }
    Ok(())
}

/// Removes `path` and everything under it, if it exists.
pub fn remove_tree(path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("remove {}", path.display())),
    }
}
