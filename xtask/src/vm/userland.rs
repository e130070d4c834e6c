//! The guest's root file system. On the machine's own architecture the
//! guest boots into the host's root, shared read-only (the tools, Node.js
//! and the repository as they are on the host). Another architecture's
//! guest cannot run the host's binaries, so it gets a root of its own in
//! `<cache>/userland-<arch>/`: Debian's packages of that architecture
//! ([`PACKAGES`], fetched with apt for it and unpacked with `dpkg -x`),
//! busybox's applets as links, and the official Node.js binary of the
//! host's version from the npm registry (`node-linux-<arch>`). The
//! working directory (the repository) is shared into it at the same path.
//! Its `node_modules` holds the host's native packages (vitest's bundler
//! rolldown, for one), so the other architecture's builds of those, at the
//! same versions, go in [`GUEST_NODE_PATH`], where Node's `require` looks
//! last. A stamp names what it holds; a change builds it again.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context, Result};
use xtask::{output, run, secs, step};

use crate::{apt::Apt, arch::Arch};

/// Debian packages of the guest's root, which of their files it takes
/// (`None`: all), and why each is there.
const PACKAGES: &[(&str, Option<&[&str]>, &str)] = &[
    ("busybox-static", None, "the shell and most tools the harness and the tests call"),
    ("libc6", None, "the C library Node.js and the addon link against"),
    ("libstdc++6", None, "Node.js is C++"),
    ("libgcc-s1", None, "unwinding, for Node.js and the addon"),
    // Only these two: util-linux's other tools need libraries not here, and
    // busybox's applets of the same names serve.
    ("util-linux", Some(&["usr/bin/setpriv", "usr/bin/unshare"]), "setpriv and unshare with the options the tests use, which busybox's lack"),
    ("libcap-ng0", None, "setpriv links against it"),
    ("libc-bin", Some(&["usr/bin/getconf"]), "getconf CLK_TCK, which test/ps.test.ts reads"),
    ("python3-minimal", None, "/usr/bin/python3, which runs test/attacks/chroot_via.py"),
    ("python3.11-minimal", None, "the interpreter"),
    ("libpython3.11-minimal", None, "the modules the interpreter starts with"),
    ("libpython3.11-stdlib", None, "ctypes, json and socket, which chroot_via.py imports"),
    ("libffi8", None, "ctypes calls through it"),
    ("libexpat1", None, "python3.11 links against it"),
    ("zlib1g", None, "python3.11 and libelf link against it"),
    ("libssl3", None, "libpython3.11-minimal links against it"),
    ("bpftool", None, "the tests list loaded programs, maps and links with it"),
    ("libelf1", None, "bpftool links against it"),
    ("libcap2", None, "bpftool links against it"),
];

/// Bumped when the layout changes in a way the stamp would not notice.
const FORMAT: u32 = 4;

/// Where the guest's own builds of the repository's native npm packages
/// are: the guest's `NODE_PATH`.
pub const GUEST_NODE_PATH: &str = "/usr/local/lib/node_modules";

/// The directories the guest's `/init` mounts over or into.
const MOUNT_POINTS: &[&str] = &["proc", "sys", "dev", "tmp", "run", "root"];

/// The guest root for `arch` (not the machine's), built if missing or stale;
/// `cwd`, the command's working directory, exists in it as a mount point.
pub(super) fn ensure_userland(cache: &Path, arch: &Arch, cwd: &Path) -> Result<PathBuf> {
    let dir = cache.join(format!("userland-{}", arch.debian));
    let node_version = output(Command::new("node").arg("--version"))
        .context("node is not on PATH: the guest runs the host's Node.js version")?
        .trim()
        .trim_start_matches('v')
        .to_string();
    let apt = Apt::own(&cache.join("apt").join(format!("machine-{}", arch.debian)), None, Some(arch.debian))?;
    let names: Vec<String> = PACKAGES.iter().map(|(p, ..)| format!("{p}:{}", arch.debian)).collect();
    let versions: Vec<(String, String)> = names.iter().cloned().zip(apt.candidates(&names)?).collect();
    let native = native_packages(arch)?;
    let stamp = format!(
        "format {FORMAT}\nnode-linux-{} {node_version}\n{}\n{}\n",
        arch.name,
        versions.iter().map(|(p, v)| format!("{p} {v}")).collect::<Vec<_>>().join("\n"),
        native.join("\n")
    );
    if fs::read_to_string(dir.join(".stamp")).ok().as_deref() != Some(stamp.as_str()) {
        build(cache, &dir, arch, &apt, &versions, &node_version, &native)?;
        fs::write(dir.join(".stamp"), &stamp)?;
    }
    // The repository (or any working directory) is mounted here by /init.
    let at = dir.join(cwd.strip_prefix("/").unwrap_or(cwd));
    fs::create_dir_all(&at).with_context(|| format!("creating the mount point {}", at.display()))?;
    Ok(dir)
}

/// `name@version` of `arch`'s build of every native package the host's
/// `node_modules` holds (`@rolldown/binding-linux-x64-gnu` →
/// `@rolldown/binding-linux-arm64-gnu`, same version).
fn native_packages(arch: &Arch) -> Result<Vec<String>> {
    let host = crate::arch::host();
    let modules = xtask::root().join("node_modules");
    let mut found = Vec::new();
    let mut dirs = Vec::new();
    for entry in fs::read_dir(&modules).with_context(|| format!("reading {}: run `cargo xtask build` first", modules.display()))? {
        let path = entry?.path();
        match path.file_name().and_then(|n| n.to_str()) {
            Some(n) if n.starts_with('@') => dirs.extend(fs::read_dir(&path)?.filter_map(|e| e.ok()).map(|e| e.path())),
            _ => dirs.push(path),
        }
    }
    let marker = format!("linux-{}", host.name);
    for dir in dirs {
        let Ok(text) = fs::read_to_string(dir.join("package.json")) else { continue };
        let pkg: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}/package.json", dir.display()))?;
        let (Some(name), Some(version)) = (pkg["name"].as_str(), pkg["version"].as_str()) else { continue };
        let cpu_only_host = pkg["cpu"].as_array().is_some_and(|c| c.len() == 1 && c[0] == host.name);
        if name.contains(&marker) && cpu_only_host {
            found.push(format!("{}@{version}", name.replace(&marker, &format!("linux-{}", arch.name))));
        }
    }
    found.sort();
    Ok(found)
}

fn build(
    cache: &Path,
    dir: &Path,
    arch: &Arch,
    apt: &Apt,
    versions: &[(String, String)],
    node: &str,
    native: &[String],
) -> Result<()> {
    step(&format!("VM root file system for {} (Debian packages, busybox, Node.js {node})", arch.name));
    let started = Instant::now();
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing stale {}", dir.display()))?;
    }
    fs::create_dir_all(dir)?;
    let debs = apt.debs(&cache.join("debs"), versions)?;
    for ((deb, (package, _)), (_, only, _)) in debs.iter().zip(versions).zip(PACKAGES) {
        match only {
            None => run(Command::new("dpkg").arg("-x").arg(deb).arg(dir))?,
            Some(files) => {
                let scratch = cache.join(format!(".userland-{}", std::process::id()));
                let _ = fs::remove_dir_all(&scratch);
                run(Command::new("dpkg").arg("-x").arg(deb).arg(&scratch))?;
                for f in *files {
                    fs::create_dir_all(dir.join(f).parent().context("a file in a directory")?)?;
                    fs::copy(scratch.join(f), dir.join(f)).with_context(|| format!("{package} holds no {f}"))?;
                }
                fs::remove_dir_all(&scratch)?;
            }
        }
    }
    for d in MOUNT_POINTS.iter().chain(&["usr/local/bin", "usr/bin", "sbin", "usr/sbin"]) {
        fs::create_dir_all(dir.join(d))?;
    }
    // The guest's busybox cannot run here to install its links; the host's
    // busybox-static (the same Debian release) names the same applets.
    let busybox = dir.join("bin/busybox");
    if !busybox.is_file() {
        bail!("busybox-static:{} holds no bin/busybox", arch.debian);
    }
    let applets = output(Command::new("/bin/busybox").arg("--list-full")).context("listing busybox's applets")?;
    for applet in applets.lines().map(str::trim).filter(|a| !a.is_empty() && *a != "bin/busybox") {
        let link = dir.join(applet);
        if link.exists() || link.symlink_metadata().is_ok() {
            continue;
        }
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent)?;
        }
        std::os::unix::fs::symlink("/bin/busybox", &link).with_context(|| format!("linking {}", link.display()))?;
    }
    // Node.js: the official binary, as the npm registry ships it.
    let tarballs = cache.join("npm");
    fs::create_dir_all(&tarballs)?;
    let tarball = npm_pack(&tarballs, &format!("node-linux-{}@{node}", arch.name))?;
    run(Command::new("tar")
        .arg("xzf")
        .arg(&tarball)
        .args(["-C"])
        .arg(dir.join("usr/local/bin"))
        .args(["--strip-components=2", "package/bin/node"]))?;
    // npm (and so npx) is not there: the harness's `npx --no-install TOOL`
    // runs the repository's node_modules/.bin/TOOL.
    let npx = dir.join("usr/local/bin/npx");
    fs::write(&npx, NPX)?;
    fs::set_permissions(&npx, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    for spec in native {
        let name = spec.rsplit_once('@').map_or(spec.as_str(), |(n, _)| n);
        let into = dir.join(GUEST_NODE_PATH.trim_start_matches('/')).join(name);
        fs::create_dir_all(&into)?;
        run(Command::new("tar").arg("xzf").arg(npm_pack(&tarballs, spec)?).arg("-C").arg(&into).arg("--strip-components=1"))?;
    }
    eprintln!("    built {} in {}", dir.display(), secs(started.elapsed()));
    Ok(())
}

/// The guest's `npx`.
const NPX: &str = r#"#!/bin/sh
# npx for a guest without npm (xtask/src/vm/userland.rs): the working
# directory's node_modules/.bin.
[ "$1" = --no-install ] && shift
tool=$1
shift
exec "$PWD/node_modules/.bin/$tool" "$@"
"#;

/// The tarball of npm package `spec` (`name@version`) in `dir`, fetched
/// from the registry with `npm pack`.
fn npm_pack(dir: &Path, spec: &str) -> Result<PathBuf> {
    let name = output(Command::new("npm").args(["pack", "--silent", "--pack-destination"]).arg(dir).arg(spec).current_dir(dir))
        .with_context(|| format!("fetching {spec} from the npm registry"))?;
    Ok(dir.join(name.trim().lines().last().unwrap_or_default()))
}
