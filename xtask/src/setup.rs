//! `cargo xtask setup`: installs what building and testing need, skipping
//! what is already present. Safe to run again and again.

use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};
use xtask::{in_root, output, require_root, root, run, step};

/// Debian packages and why each is needed.
const APT_PACKAGES: &[(&str, &str)] = &[
    ("rustc-web", "rustc 1.96 with a prebuilt core for the BPF target (no nightly)"),
    ("cargo-web", "the cargo matching rustc-web"),
    ("libstd-rust-web-dev-bpf", "core/alloc for bpfel-unknown-none"),
    ("bpftool", "tests check which programs are loaded"),
    ("busybox-static", "the demo's and tests' tiny root file system"),
    ("python3", "adversarial tests make raw syscalls (open_tree, fsmount, SCM_RIGHTS) with ctypes"),
    ("prometheus", "the agent test scrapes the agent and reads its counters back through the query API"),
    ("python3-venv", "the project-local Python environment for kubernetes-validate (see PYTHON_TOOLS)"),
    ("systemd", "the deploy test checks examples/systemd/ with systemd-analyze (it does not need systemd to run)"),
    ("strace", "the deploy test records the agent's system calls to check the example unit's SystemCallFilter="),
];

/// Python tools, pinned, in the project-local environment [`VENV`] (so the
/// machine's Python is left as it is), and why each is needed.
pub const PYTHON_TOOLS: &[(&str, &str)] =
    &[("kubernetes-validate==1.37.0", "the deploy test validates examples/kubernetes/ against Kubernetes' schemas")];

/// The project-local Python environment, relative to the repository root:
/// `.cache/venv/bin/kubernetes-validate` and so on.
pub const VENV: &str = ".cache/venv";

/// The bpf-linker release the eBPF build is pinned to: its default LLVM (22)
/// is the one rustc-web 1.96 emits bitcode for.
pub const BPF_LINKER_VERSION: &str = "0.10.4";

fn apt_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// Installs the missing apt packages (with an `apt-get update` first, since
/// rustc-web 1.96 comes from bookworm-security).
pub fn apt(packages: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().map(|(p, _)| *p).filter(|p| !apt_installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    require_root(&format!("installing {}", missing.join(" ")))?;
    step(&format!("apt-get install {}", missing.join(" ")));
    run(Command::new("apt-get").args(["update", "-q"]).env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Whether `bpf-linker` [`BPF_LINKER_VERSION`] is on the PATH.
pub fn bpf_linker_ok() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
        .unwrap_or(false)
}

fn npm_up_to_date() -> bool {
    let lock = root().join("package-lock.json");
    let installed = root().join("node_modules/.package-lock.json");
    match (lock.metadata().and_then(|m| m.modified()), installed.metadata().and_then(|m| m.modified())) {
        (Ok(l), Ok(i)) => i >= l,
        _ => false,
    }
}

/// Whether [`VENV`] was made where it is. A venv is not relocatable: its
/// scripts start with `#!` and the absolute path of its python, so one
/// copied or moved with the checkout runs nothing.
fn venv_in_place(venv: &Path) -> bool {
    std::fs::read_to_string(venv.join("bin/pip"))
        .is_ok_and(|pip| pip.lines().next() == Some(&format!("#!{}", venv.join("bin/python3").display())))
}

/// Whether the package `name==version` is installed in [`VENV`].
fn python_tool_installed(spec: &str) -> bool {
    let Some((name, version)) = spec.split_once("==") else { return false };
    Command::new(root().join(VENV).join("bin/pip"))
        .args(["show", name])
        .output()
        .map(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).lines().any(|l| l == format!("Version: {version}"))
        })
        .unwrap_or(false)
}

/// Creates [`VENV`] with Debian's python3 when missing and installs the
/// missing [`PYTHON_TOOLS`] into it with its pip (from PyPI).
pub fn python_tools() -> Result<()> {
    let venv = root().join(VENV);
    let missing: Vec<&str> = PYTHON_TOOLS.iter().map(|(p, _)| *p).filter(|p| !python_tool_installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !venv_in_place(&venv) {
        step(&format!("python3 -m venv --clear {VENV}"));
        run(Command::new("/usr/bin/python3").args(["-m", "venv", "--clear"]).arg(&venv))?;
    }
    step(&format!("pip install {} (into {VENV})", missing.join(" ")));
    run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", "--disable-pip-version-check"]).args(&missing))
}

/// Everything `build` and `test` need.
pub fn setup() -> Result<()> {
    step("setup: checking apt packages, bpf-linker, npm packages, Python tools");
    apt(APT_PACKAGES)?;
    python_tools()?;
    let rustc = output(Command::new("/usr/bin/rustc").args(["--version", "--verbose"]))
        .context("Debian's rustc-web is missing: apt-get install rustc-web libstd-rust-web-dev-bpf")?;
    if !rustc.contains("LLVM version: 22") {
        bail!(
            "/usr/bin/rustc is not built on LLVM 22 (bpf-linker {BPF_LINKER_VERSION} needs it):\n{rustc}\n\
             run `apt-get update && apt-get install rustc-web` to get rustc-web 1.96 from bookworm-security"
        );
    }
    if !Path::new("/usr/lib/rustlib/bpfel-unknown-none").exists() {
        bail!("no core library for bpfel-unknown-none: apt-get install libstd-rust-web-dev-bpf");
    }
    if !bpf_linker_ok() {
        step(&format!("cargo install bpf-linker {BPF_LINKER_VERSION} (about a minute)"));
        run(Command::new("cargo").args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--force",
        ]))?;
    }
    if !npm_up_to_date() {
        step("npm ci");
        run(in_root("npm").args(["ci", "--no-audit", "--no-fund"]))?;
    }
    Ok(())
}
