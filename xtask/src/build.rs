//! `cargo xtask build-ebpf` and `cargo xtask build`.

use std::{fs, os::unix::fs::PermissionsExt, path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};
use xtask::{npx, output, root, run, step};

/// The libLLVM that Debian's rustc links, found with ldd.
fn rustc_libllvm() -> Result<PathBuf> {
    let ldd = output(Command::new("ldd").arg("/usr/bin/rustc"))?;
    ldd.lines()
        .filter(|l| l.contains("libLLVM"))
        .find_map(|l| l.split("=>").nth(1)?.split_whitespace().next().map(PathBuf::from))
        .context("ldd /usr/bin/rustc shows no libLLVM: is rustc-web installed? Run `cargo xtask setup` first")
}

/// Builds `crates/ebpf` for bpfel-unknown-none.
///
/// bpf-linker 0.10 (feature rust-llvm-22) loads libLLVM at run time from the
/// directories in LD_LIBRARY_PATH; we give it a directory holding only the
/// LLVM that rustc-web uses, so the bitcode and the linker always agree.
pub fn build_ebpf() -> Result<()> {
    step("eBPF object (rustc-web + bpf-linker, bpfel-unknown-none)");
    if !crate::setup::bpf_linker_ok() {
        bail!("bpf-linker {} is not installed: run `cargo xtask setup` first", crate::setup::BPF_LINKER_VERSION);
    }
    let llvm_dir = root().join("target/bpf-llvm");
    fs::create_dir_all(&llvm_dir)?;
    let lib = rustc_libllvm()?;
    let link = llvm_dir.join(lib.file_name().context("libLLVM file name")?);
    if fs::read_link(&link).ok().as_ref() != Some(&lib) {
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&lib, &link)?;
    }
    if !PathBuf::from("/usr/bin/cargo").exists() {
        bail!("/usr/bin/cargo is missing: run `cargo xtask setup` first (it installs cargo-web)");
    }
    run(Command::new("/usr/bin/cargo")
        .args(["build", "--release"])
        .current_dir(root().join("crates/ebpf"))
        .env("RUSTC", "/usr/bin/rustc")
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_DIR", root().join("target"))
        .env("LD_LIBRARY_PATH", &llvm_dir)
        .env_remove("RUSTFLAGS"))
}

/// eBPF object, napi addon (with the object embedded), TypeScript.
pub fn build() -> Result<()> {
    build_ebpf()?;
    step("napi addon (crates/loader)");
    run(&mut npx(&[
        "napi",
        "build",
        "--platform",
        "--release",
        "--strip",
        "--manifest-path",
        "crates/loader/Cargo.toml",
        "--output-dir",
        "target/napi-out",
        "--js",
        "binding.cjs",
        "--dts",
        "binding.d.cts",
        "--package-json-path",
        "package.json",
    ]))?;
    install_dir(&root().join("target/napi-out"), &root().join("ts/native"))?;
    step("TypeScript (tsc --noEmit, then tsup: ESM, CommonJS, declarations, CLI)");
    run(&mut npx(&["tsc", "-p", "tsconfig.json", "--noEmit"]))?;
    run(&mut npx(&["tsup", "--silent"]))?;
    install_dir(&root().join("ts/native"), &root().join("dist/native"))?;
    let cli = root().join("dist/cli.js");
    if cli.exists() {
        fs::set_permissions(&cli, fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

/// Copies every file of `from` into `to`, each to a temporary name first and
/// then renamed over the old one. A process that has the old `.node` addon
/// loaded (a CLI or test still running) keeps its mapping of the old inode;
/// copying over the file in place would change the pages under it and crash
/// it.
fn install_dir(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        let tmp = to.join(format!(".{}.tmp", name.to_string_lossy()));
        fs::copy(entry.path(), &tmp).with_context(|| format!("copying {}", entry.path().display()))?;
        fs::rename(&tmp, to.join(&name))?;
    }
    Ok(())
}
