//! `cargo xtask build-ebpf` and `cargo xtask build`.

use std::{fs, os::unix::fs::PermissionsExt, path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};
use xtask::{npx, output, root, run, step};

use crate::arch::{self, Arch};

/// The libLLVM that Debian's rustc links, found with ldd.
fn rustc_libllvm() -> Result<PathBuf> {
    let ldd = output(Command::new("ldd").arg("/usr/bin/rustc"))?;
    ldd.lines()
        .filter(|l| l.contains("libLLVM"))
        .find_map(|l| l.split("=>").nth(1)?.split_whitespace().next().map(PathBuf::from))
        .context("ldd /usr/bin/rustc shows no libLLVM: is rustc-web installed? Run `cargo xtask setup` first")
}

/// Builds `crates/ebpf` for bpfel-unknown-none with `bpf_target_arch` set
/// to `arch` (`arch.rs` says why), into [`Arch::ebpf_object`]: the object,
/// and beside it the legacy object (feature `legacy`) for kernels 5.8 to
/// 5.12, both without DWARF ([`strip_dwarf`]).
///
/// bpf-linker 0.10 (feature rust-llvm-22) loads libLLVM at run time from the
/// directories in LD_LIBRARY_PATH; we give it a directory holding only the
/// LLVM that rustc-web uses, so the bitcode and the linker always agree.
pub fn build_ebpf(arch: &Arch) -> Result<()> {
    step(&format!(
        "eBPF objects for {}, the full one and the legacy one at once (rustc-web + bpf-linker, bpfel-unknown-none)",
        arch.name
    ));
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
    let object = |legacy: bool| {
        run(Command::new("/usr/bin/cargo")
            .args(["build", "--release"])
            .args(if legacy { &["--features", "legacy"][..] } else { &[] })
            .current_dir(root().join("crates/ebpf"))
            .env("RUSTC", "/usr/bin/rustc")
            .env("RUSTC_BOOTSTRAP", "1")
            .env("CARGO_TARGET_DIR", arch.ebpf_target_dir(legacy))
            // aya-build's way to set `bpf_target_arch` without RUSTFLAGS, which
            // would replace the BTF flags of crates/ebpf/.cargo/config.toml.
            .env("AYA_BPF_TARGET_ARCH", arch.target_arch)
            .env("LD_LIBRARY_PATH", &llvm_dir)
            .env_remove("RUSTFLAGS"))
    };
    // Both at once, each in its own target directory: each build is mostly
    // one rustc at a time (core, then the crate, one codegen unit), so the
    // pair takes about the time of one.
    let (full, legacy) = std::thread::scope(|s| {
        let legacy = s.spawn(|| object(true));
        (object(false), legacy.join())
    });
    full?;
    legacy.unwrap_or_else(|_| Err(anyhow::anyhow!("the legacy object's build panicked")))?;
    for legacy in [false, true] {
        strip_dwarf(&arch.ebpf_object(legacy))?;
    }
    Ok(())
}

/// Removes the object's DWARF (`.debug_*` sections and their `.rel.debug_*`
/// relocations) in place: bpf-linker makes BTF from DWARF, so the build
/// must emit it (`-C debuginfo=2`), but nothing reads it after that; the
/// kernel gets BTF and `.BTF.ext` (function and line info), which stay.
/// Without it the object is about a quarter of its size, and aya parses it
/// about 3.5 ms faster at every load (on the development host). Running it
/// on a stripped object changes nothing.
///
/// The removed sections' headers become `SHT_NULL` (all zero) where they
/// are and their bytes are dropped, so that no section, symbol or
/// relocation index changes. (`llvm-objcopy --strip-debug` is not on every
/// build machine, and the `object` crate's ELF builder cannot write an
/// object whose section names share `.strtab` with its symbols, as
/// bpf-linker's do.)
fn strip_dwarf(object: &std::path::Path) -> Result<()> {
    let data = fs::read(object).with_context(|| format!("reading {}", object.display()))?;
    let bytes = |o: usize, n: usize| data.get(o..o + n).context("the ELF file is cut short");
    let u16_at = |o: usize| -> Result<u16> { Ok(u16::from_le_bytes(bytes(o, 2)?.try_into()?)) };
    let u32_at = |o: usize| -> Result<u32> { Ok(u32::from_le_bytes(bytes(o, 4)?.try_into()?)) };
    let u64_at = |o: usize| -> Result<usize> { Ok(u64::from_le_bytes(bytes(o, 8)?.try_into()?) as usize) };
    // ELF64, little-endian (bpfel), relocatable, no program headers.
    if bytes(0, 6)? != b"\x7fELF\x02\x01" || u16_at(16)? != 1 || u16_at(56)? != 0 || u16_at(0x3a)? != 64 {
        bail!("{} is not a little-endian ELF64 relocatable object", object.display());
    }
    let (shoff, shnum, shstrndx) = (u64_at(0x28)?, usize::from(u16_at(0x3c)?), usize::from(u16_at(0x3e)?));
    let field = |i: usize, at: usize| shoff + i * 64 + at;
    let names = u64_at(field(shstrndx, 24))?;
    let mut out = bytes(0, 64)?.to_vec();
    let mut headers = Vec::with_capacity(shnum * 64);
    for i in 0..shnum {
        let mut header = bytes(field(i, 0), 64)?.to_vec();
        let name_at = names + u32_at(field(i, 0))? as usize;
        let name = data.get(name_at..).and_then(|n| n.split(|&b| b == 0).next()).context("a section name")?;
        if i != 0 && (name.starts_with(b".debug_") || name.starts_with(b".rel.debug_")) {
            header.fill(0);
        } else if i != 0 {
            const SHT_NOBITS: u32 = 8;
            let align = u64_at(field(i, 48))?.max(1);
            out.resize(out.len().next_multiple_of(align), 0);
            header[24..32].copy_from_slice(&(out.len() as u64).to_le_bytes());
            if u32_at(field(i, 4))? != SHT_NOBITS {
                out.extend_from_slice(bytes(u64_at(field(i, 24))?, u64_at(field(i, 32))?)?);
            }
        }
        headers.extend_from_slice(&header);
    }
    out.resize(out.len().next_multiple_of(8), 0);
    let at = out.len() as u64;
    out[0x28..0x30].copy_from_slice(&at.to_le_bytes());
    out.extend_from_slice(&headers);
    // A new file renamed over the old: cargo hard-links its output.
    let tmp = object.with_extension("stripping");
    fs::write(&tmp, &out).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, object).with_context(|| format!("renaming {} to {}", tmp.display(), object.display()))?;
    Ok(())
}

/// eBPF object, napi addon (with the object embedded), TypeScript, for the
/// machine's architecture; then the addon of each of `also` (cross-built,
/// [`build_cross`]), beside it in ts/native and dist/native.
pub fn build(also: &[&Arch]) -> Result<()> {
    let host = arch::host();
    build_ebpf(host)?;
    step("napi addon (crates/loader)");
    run(&mut napi_build(host, "target/napi-out", &["--js", "binding.cjs", "--dts", "binding.d.cts"]))?;
    install_dir(&root().join("target/napi-out"), &root().join("ts/native"))?;
    step("TypeScript (tsc --noEmit, then tsup: ESM, CommonJS, declarations, CLI)");
    run(&mut npx(&["tsc", "-p", "tsconfig.json", "--noEmit"]))?;
    run(&mut npx(&["tsup", "--silent"]))?;
    install_dir(&root().join("ts/native"), &root().join("dist/native"))?;
    let cli = root().join("dist/cli.js");
    if cli.exists() {
        fs::set_permissions(&cli, fs::Permissions::from_mode(0o755))?;
    }
    build_cross(also)
}

/// The addon of each of `also` that is not the machine's architecture,
/// cross-built with its eBPF object inside, into ts/native and dist/native
/// beside the machine's (which [`build`] made first). Each file is renamed
/// into place, so a VM already running from dist/ is undisturbed:
/// `cargo xtask test` builds these beside its first VM, which needs only
/// the machine's.
pub fn build_cross(also: &[&Arch]) -> Result<()> {
    for arch in also.iter().filter(|a| !a.is_host()) {
        let node = build_cross_addon(arch)?;
        install_file(&node, &root().join("ts/native"))?;
        install_file(&node, &root().join("dist/native"))?;
    }
    Ok(())
}

/// `napi build` of crates/loader (release, stripped, the platform in the
/// file name) with `arch`'s eBPF object inside, into `out_dir`, plus `extra`.
fn napi_build(arch: &Arch, out_dir: &str, extra: &[&str]) -> std::process::Command {
    let mut c = npx(&["napi", "build", "--platform", "--release", "--strip", "--manifest-path", "crates/loader/Cargo.toml"]);
    c.args(["--output-dir", out_dir, "--package-json-path", "package.json"])
        .args(extra)
        .env("CHROOT_GUARD_EBPF_OBJECT", arch.ebpf_object(false))
        .env("CHROOT_GUARD_EBPF_OBJECT_LEGACY", arch.ebpf_object(true));
    c
}

/// The addon for `arch`, cross-built (`cross.rs`) with `arch`'s eBPF object
/// inside: the path of its `.node` file, the only one installed, since the
/// JS binding and the declarations are the same for every architecture.
fn build_cross_addon(arch: &Arch) -> Result<std::path::PathBuf> {
    build_ebpf(arch)?;
    let env = crate::cross::cargo_env(arch)?;
    step(&format!("napi addon (crates/loader) for {}, cross-built", arch.triple));
    let out_dir = format!("target/napi-out-cross/{}", arch.name);
    let out = root().join(&out_dir);
    let _ = fs::remove_dir_all(&out);
    run(napi_build(arch, &out_dir, &["--target", arch.triple, "--no-js", "--target-dir", "target/cross"]).envs(env))?;
    let node = format!("chroot-guard.{}.node", arch.platform());
    if !out.join(&node).is_file() {
        bail!("napi build left no {node} in {}", out.display());
    }
    Ok(out.join(node))
}

/// Copies every file of `from` into `to`, each to a temporary name first and
/// then renamed over the old one. A process that has the old `.node` addon
/// loaded (a CLI or test still running) keeps its mapping of the old inode;
/// copying over the file in place would change the pages under it and crash
/// it.
fn install_dir(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
    for entry in fs::read_dir(from)? {
        install_file(&entry?.path(), to)?;
    }
    Ok(())
}

/// Copies the file `from` into the directory `to` as [`install_dir`] does.
fn install_file(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
    fs::create_dir_all(to)?;
    let name = from.file_name().context("file name")?;
    let tmp = to.join(format!(".{}.tmp", name.to_string_lossy()));
    fs::copy(from, &tmp).with_context(|| format!("copying {}", from.display()))?;
    fs::rename(&tmp, to.join(name))?;
    Ok(())
}
