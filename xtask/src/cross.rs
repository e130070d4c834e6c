//! Cross-building the addon for an architecture that is not the machine's,
//! with the same Debian rustc-web that builds everything else (no rustup
//! target, which this machine cannot fetch): Debian ships the standard
//! library of that very rustc for the other architecture
//! (`libstd-rust-web-dev:<arch>` and `libstd-rust-web-<x.y>:<arch>`). They
//! are fetched with apt for that architecture (`crate::apt`, nothing is
//! installed), unpacked into `.cache/cross/<arch>/sysroot/`, and rustc is
//! pointed at that sysroot for the target's crates only (build scripts and
//! proc macros still run on the machine). Debian's `gcc-<arch>-linux-gnu`
//! links.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use xtask::{output, root, run, step};

use crate::{apt::Apt, arch::Arch};

/// The environment cargo needs to build for `arch` with rustc-web; fetches
/// and unpacks the standard library and installs the cross linker first if
/// missing.
pub fn cargo_env(arch: &Arch) -> Result<Vec<(String, String)>> {
    let (gcc_package, gcc) = arch.cross_gcc;
    crate::setup::apt(&[
        (gcc_package, "links the addon cross-built for another architecture"),
        (arch.cross_libc, "the C library that linker links against"),
    ])?;
    let sysroot = sysroot(arch)?;
    let var = arch.triple.to_uppercase().replace('-', "_");
    Ok(vec![
        ("RUSTC".into(), "/usr/bin/rustc".into()),
        (format!("CARGO_TARGET_{var}_LINKER"), gcc.into()),
        // RUSTFLAGS, not CARGO_TARGET_<triple>_RUSTFLAGS: napi build sets
        // RUSTFLAGS (for --strip), which would override the other. With
        // --target, cargo gives RUSTFLAGS to the target's crates only.
        ("RUSTFLAGS".into(), format!("--sysroot={}", sysroot.display())),
    ])
}

/// rustc-web's version as Debian's package names it:
/// (`1.96.0+dfsg1-1~deb12u2`, `1.96`).
fn rustc_web_version() -> Result<(String, String)> {
    let version = output(Command::new("dpkg-query").args(["-W", "-f=${Version}", "rustc-web"]))
        .context("rustc-web is not installed: run `cargo xtask setup` first")?;
    let mut parts = version.split(['.', '+', '-', '~']);
    let short = match (parts.next(), parts.next()) {
        (Some(major), Some(minor)) => format!("{major}.{minor}"),
        _ => bail!("cannot read rustc-web's version {version:?}"),
    };
    Ok((version, short))
}

/// `.cache/cross/<debian arch>/sysroot`: `lib/rustlib/` holding links to the
/// machine's own target libraries and the unpacked ones of `arch`, for
/// exactly the installed rustc-web's version (a stamp names it; another
/// version unpacks again).
fn sysroot(arch: &Arch) -> Result<PathBuf> {
    let (version, short) = rustc_web_version()?;
    let cache = root().join(".cache/cross").join(arch.debian);
    let sysroot = cache.join("sysroot");
    let stamp = format!("rustc-web {version}\n");
    if fs::read_to_string(sysroot.join("stamp")).ok().as_deref() == Some(stamp.as_str()) {
        return Ok(sysroot);
    }
    step(&format!("the Rust standard library for {} (rustc-web {version}, {})", arch.triple, arch.debian));
    let apt = Apt::own(&cache.join("apt"), None, Some(arch.debian))?;
    let unpacked = cache.join("unpacked");
    let _ = fs::remove_dir_all(&unpacked);
    let _ = fs::remove_dir_all(&sysroot);
    for package in ["libstd-rust-web-dev".to_string(), format!("libstd-rust-web-{short}")] {
        let deb = apt.deb(&cache.join("debs"), &format!("{package}:{}", arch.debian), &version)?;
        run(Command::new("dpkg").arg("-x").arg(&deb).arg(&unpacked))?;
    }
    let rustlib = sysroot.join("lib/rustlib");
    fs::create_dir_all(&rustlib)?;
    let theirs = unpacked.join("usr/lib/rustlib").join(arch.triple);
    if !theirs.join("lib").is_dir() {
        bail!("libstd-rust-web-dev:{} holds no {}", arch.debian, theirs.display());
    }
    link(&theirs, &rustlib.join(arch.triple))?;
    for entry in fs::read_dir("/usr/lib/rustlib").context("reading /usr/lib/rustlib (rustc-web's own)")? {
        let entry = entry?;
        if entry.file_name() != arch.triple {
            link(&entry.path(), &rustlib.join(entry.file_name()))?;
        }
    }
    fs::write(sysroot.join("stamp"), stamp)?;
    Ok(sysroot)
}

fn link(target: &Path, at: &Path) -> Result<()> {
    std::os::unix::fs::symlink(target, at).with_context(|| format!("linking {} to {}", at.display(), target.display()))
}
