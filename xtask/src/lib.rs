//! Helpers shared by the xtask verbs: where things are, running commands
//! with a visible step log, and checks with remedies.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context, Result};

/// The repository root (the workspace of this xtask).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// Prints a step header: `==> what`.
pub fn step(what: &str) {
    eprintln!("\x1b[1m==> {what}\x1b[0m");
}

/// Runs `cmd`, streaming its output, and fails with its exit status.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let started = Instant::now();
    let status = cmd.status().with_context(|| format!("could not start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status} after {:.1}s", started.elapsed().as_secs_f64());
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout (stderr passes through).
pub fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("could not start {shown}"))?;
    if !out.status.success() {
        bail!("{shown} failed with {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A duration as seconds with one decimal: `12.3s`.
pub fn secs(d: std::time::Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Uid:")).map(|v| v.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

/// Fails unless root, saying why root is needed.
pub fn require_root(why: &str) -> Result<()> {
    if !is_root() {
        bail!("{why} needs root: run it again as root (e.g. with sudo)");
    }
    Ok(())
}

/// A command run in the repository root.
pub fn in_root(program: &str) -> Command {
    let mut c = Command::new(program);
    c.current_dir(root());
    c
}

/// `npx` with the repository's node_modules.
pub fn npx(args: &[&str]) -> Command {
    let mut c = in_root("npx");
    c.arg("--no-install").args(args);
    c
}
