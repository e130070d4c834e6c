//! The kernel package: which kernels the VM boots ([`KERNELS`], chosen with
//! `--kernel`), which package (`linux-image-amd64`'s dependency in that
//! kernel's Debian suite, asked of apt, or the newest cached one when apt
//! cannot answer), its `.deb`
//! fetched with `apt-get download` into `<repo>/.cache/vm/debs/`, and
//! unpacked with `dpkg -x` into `<repo>/.cache/vm/kernel/<package>_<version>/`
//! with only what the guest needs: the kernel image, the modules of
//! `modules.rs` and their load order. A stamp in that directory says what
//! it was unpacked for, so a change of the module list unpacks it again;
//! otherwise the cache makes later runs work offline.
//!
//! The machine's own apt sources name its release (bookworm, Linux 6.1).
//! Other releases are asked through an apt configuration of our own in
//! `<repo>/.cache/vm/apt/<suite>/` (`crate::apt`).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context, Result};
use xtask::{output, run as run_cmd, secs, step};

use super::{
    image::extract_pvh_vmlinux,
    modules::{collect_modules, decompress_module, load_order, modinfo_depends, module_name, MODULES, MODULES_NOT_IN_EVERY_KERNEL},
};
use crate::{
    apt::Apt,
    arch::{Arch, ARM64, X64},
};

/// The meta package whose dependency names the current kernel package of
/// an architecture (`linux-image-amd64`, `linux-image-arm64`).
fn meta_package(arch: &Arch) -> String {
    format!("linux-image-{}", arch.debian)
}

/// `package` as apt names it for `arch`: qualified (`name:arm64`) when that
/// is not the machine's architecture.
fn for_arch(package: &str, arch: &Arch) -> String {
    if arch.is_host() {
        package.to_string()
    } else {
        format!("{package}:{}", arch.debian)
    }
}

/// A kernel the VM can boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelSpec {
    /// The version users name it by (`--kernel 5.10`).
    pub name: &'static str,
    /// The architecture of the kernel and the guest.
    pub arch: &'static Arch,
    /// The Debian suite whose `linux-image-<arch>` it is; `None` for the
    /// machine's own release, through the machine's apt sources.
    suite: Option<&'static str>,
    /// Kernel command line arguments it needs: Debian's 5.10 does not list
    /// `bpf` in `CONFIG_LSM`, so the BPF LSM is asked for at boot.
    pub boot_args: &'static [&'static str],
    /// The mode `auto` picks there, which the tests expect
    /// (`CG_EXPECT_AUTO_MODE`); `none` where no mode can run.
    pub auto_mode: &'static str,
    /// The modes the default run forces there besides `auto`, each on the
    /// files of [`KernelSpec::files`] whose tests depend on the mode
    /// (`PER_MODE_FILES` in test.rs).
    pub forced_modes: &'static [&'static str],
    /// The test files that run on it.
    pub files: Files,
    /// How many times slower than x86-64 under TCG its guest runs: vitest's
    /// test and hook timeouts are multiplied by it.
    pub slowdown: u32,
}

/// Which test files run on a kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Files {
    /// The whole suite.
    All,
    /// Only these, and why: printed under the summary.
    Only(&'static [&'static str], &'static str),
}

/// Every kernel `--kernel` accepts, oldest first. Each has BTF, kprobes and
/// `CONFIG_BPF_LSM` (docs/platform.md).
pub const KERNELS: &[KernelSpec] = &[
    KernelSpec {
        name: "5.10",
        arch: &X64,
        suite: Some("bullseye"),
        boot_args: &["lsm=lockdown,capability,yama,apparmor,bpf"],
        auto_mode: "fentry",
        forced_modes: &[],
        slowdown: 1,
        files: Files::Only(
            &[
                "test/features.test.ts",
                "test/doctor.test.ts",
                "test/attach.test.ts",
                "test/watch.test.ts",
                "test/stacks.test.ts",
                "test/ps.test.ts",
            ],
            "5.10 lacks task storage in tracing programs (5.12) and bpf_get_current_task_btf() (5.11), so it runs the legacy eBPF object, which watches in every mode; the guard also needs bpf_loop() (5.17), so the guard's files would only repeat the refusal that test/features.test.ts asserts",
        ),
    },
    KernelSpec {
        name: "6.1",
        arch: &X64,
        suite: None,
        boot_args: &[],
        auto_mode: "fentry",
        forced_modes: &["kprobe", "tracepoint"],
        files: Files::All,
        slowdown: 1,
    },
    KernelSpec {
        name: "6.12",
        arch: &X64,
        suite: Some("trixie"),
        boot_args: &[],
        auto_mode: "fentry",
        forced_modes: &[],
        files: Files::Only(
            &[
                "test/features.test.ts",
                "test/doctor.test.ts",
                "test/attach.test.ts",
                "test/watch.test.ts",
                "test/guard.test.ts",
                "test/escape.test.ts",
                "test/preemption.test.ts",
                "test/escapes.test.ts",
                "test/stacks.test.ts",
                "test/ps.test.ts",
            ],
            "the files that load each program (the watch probes, the BPF LSM guard, the escape facts, stacks, ps's task iterator) and check what the kernel offers, and the attacks on the guard and fentry's refusal and counting under full preemption (escape, preemption); the rest exercise the same programs through the CLI, the agent and the pins, which 6.1 runs, and are left out for CI's time (the whole `auto` suite takes 750 s alone under TCG)",
        ),
        slowdown: 1,
    },
    KernelSpec {
        name: "6.1",
        arch: &ARM64,
        suite: None,
        boot_args: &[],
        auto_mode: "kprobe",
        // Not `tracepoint` yet: in one of four runs its watch suite saw no
        // event of the attack scripts' calls (docs/platform.md); run it
        // with `--vm-mode tracepoint`.
        forced_modes: &[],
        // doctor takes 11 s there against 8 s on x86-64's 6.1 (with
        // `-cpu neoverse-n1`, see qemu.rs); 3 leaves room for a slower machine.
        slowdown: 3,
        files: Files::Only(
            &[
                "test/doctor.test.ts",
                "test/features.test.ts",
                "test/attach.test.ts",
                "test/stacks.test.ts",
                "test/package.test.ts",
                "test/watch.test.ts",
                "test/escapes.test.ts",
                "test/ps.test.ts",
            ],
            "on Debian's arm64 6.1 fentry/fexit and BPF LSM programs fail to attach (bpf_raw_tracepoint_open: ENOTSUPP; arm64's BPF trampolines need ftrace direct calls, 6.4), so auto picks kprobe and no guard loads (doctor reports why), and the guard's files would only skip; the rest of the watch files (cli, loss, lifecycle, errors, memory, cgroup) are left out for CI's time: arm64 under TCG runs about 1.4 times slower than x86-64. package.test.ts runs the host's npm install for arm64 (target/install/arm64); the tests' C programs are cross-built on the host (the arm64 root has no compiler), the AArch32 caller of watch.test.ts with arm-linux-gnueabihf-gcc",
        ),
    },
];

/// The kernels the default `cargo xtask test` boots, in order: every mode
/// on the machine's release's, then `auto` on the others, each on the files
/// its [`KernelSpec::files`] names.
pub const DEFAULT_RUN: &[&str] = &["6.1", "5.10", "6.12", "6.1/arm64"];

impl KernelSpec {
    /// How users name it: `6.1` on the machine's architecture, `6.1/arm64`
    /// on another.
    pub fn label(&self) -> String {
        if self.arch.is_host() {
            self.name.to_string()
        } else {
            format!("{}/{}", self.name, self.arch.name)
        }
    }
}

/// The kernel the VM boots unless told otherwise: the machine's release's.
pub const DEFAULT_KERNEL: &str = "6.1";

/// The [`KERNELS`] entry `label` names (`6.1`, `6.1/arm64`), or an error
/// listing them.
pub fn kernel_spec(label: &str) -> Result<KernelSpec> {
    KERNELS.iter().copied().find(|k| k.label() == label).with_context(|| {
        format!("no VM kernel {label}: choose one of {}", KERNELS.iter().map(KernelSpec::label).collect::<Vec<_>>().join(", "))
    })
}

/// Parses `--kernel` and `--vm-kernel` (clap's `value_parser`).
pub fn parse_kernel(s: &str) -> Result<KernelSpec, String> {
    kernel_spec(s).map_err(|e| format!("{e:#}"))
}

/// apt for `spec`'s kernel on `arch`: the machine's for its own release
/// and architecture, else our own configuration in
/// `<cache>/apt/<suite or "machine">[-<arch>]/`.
fn apt_for(cache: &Path, spec: &KernelSpec, arch: &Arch) -> Result<Apt> {
    let foreign = (!arch.is_host()).then_some(arch.debian);
    if spec.suite.is_none() && foreign.is_none() {
        return Ok(Apt::machine());
    }
    let name = format!("{}{}", spec.suite.unwrap_or("machine"), foreign.map(|a| format!("-{a}")).unwrap_or_default());
    Apt::own(&cache.join("apt").join(name), spec.suite, foreign)
}

/// An unpacked kernel: the image and the modules the initramfs needs.
#[derive(Debug)]
pub(super) struct Kernel {
    /// e.g. `linux-image-6.1.0-56-amd64-unsigned_6.1.192-2`.
    pub(super) id: String,
    /// `uname -r` of this kernel, e.g. `6.1.0-56-amd64`.
    pub(super) release: String,
    /// The kernel image QEMU boots: the uncompressed `vmlinux` (PVH entry,
    /// which skips the slow decompression under TCG) when it could be
    /// extracted, else the package's `vmlinuz`.
    pub(super) image: PathBuf,
    /// Directory with `<module>.ko` for every entry of [`MODULES`] that is
    /// not built into the kernel.
    pub(super) modules: PathBuf,
    /// The modules to insert, dependencies first (built-in ones left out).
    pub(super) load_order: Vec<String>,
}

/// Names the kernel package and its candidate version with apt-cache,
/// running `apt-get update` once if apt knows nothing yet.
fn kernel_package(apt: &Apt, arch: &Arch) -> Result<(String, String)> {
    match kernel_package_from_apt(apt, arch) {
        Ok(found) => Ok(found),
        Err(first) => {
            eprintln!("    apt does not know the kernel package yet ({first:#}); running apt-get update");
            apt.update()?;
            kernel_package_from_apt(apt, arch)
        }
    }
}

/// One `apt-cache show` of the meta package: its `Depends:` names the
/// signed image package with an exact version (`linux-image-6.1.0-56-amd64
/// (= 6.1.192-2)`); the unsigned package of the same source has that version.
fn kernel_package_from_apt(apt: &Apt, arch: &Arch) -> Result<(String, String)> {
    let meta = meta_package(arch);
    let show = output(apt.command("apt-cache").args(["show", "--no-all-versions", &for_arch(&meta, arch)]))?;
    let depends = show
        .lines()
        .find_map(|l| l.strip_prefix("Depends:"))
        .with_context(|| format!("`apt-cache show {meta}` has no Depends line"))?;
    let (image, pinned) = depends
        .split(',')
        .map(str::trim)
        .find_map(|dep| {
            let (name, rest) = dep.split_once(' ').unwrap_or((dep, ""));
            let version = rest.trim().strip_prefix("(=").and_then(|v| v.strip_suffix(')')).map(str::trim);
            name.starts_with("linux-image-").then(|| (name.to_string(), version.map(str::to_string)))
        })
        .with_context(|| format!("{meta} depends on no linux-image package: {}", depends.trim()))?;
    let package = if image.ends_with("-unsigned") { image } else { format!("{image}-unsigned") };
    let version = match pinned {
        Some(v) => v,
        None => apt.candidate(&for_arch(&package, arch))?,
    };
    Ok((package, version))
}

/// The newest complete unpacked kernel of `spec` in the cache, for
/// offline use (`linux-image-<name>.`…).
fn newest_cached_kernel(cache: &Path, spec: &KernelSpec, arch: &Arch) -> Option<String> {
    let prefix = format!("linux-image-{}.", spec.name);
    let flavour = format!("-{}-unsigned_", arch.debian);
    let mut ids: Vec<String> = fs::read_dir(cache.join("kernel"))
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("stamp").is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|id| id.starts_with(&prefix) && id.contains(&flavour))
        .collect();
    ids.sort_by_key(|id| version_key(id));
    ids.pop()
}

/// Sort key comparing the numbers in a package id numerically.
fn version_key(s: &str) -> Vec<u64> {
    s.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect()
}

/// Makes sure the kernel image and modules are unpacked in the cache, fetching
/// the package when needed.
pub(super) fn ensure_kernel(cache: &Path, spec: &KernelSpec) -> Result<Kernel> {
    let arch = spec.arch;
    let from = spec.suite.map_or_else(|| "the machine's apt sources".to_string(), |s| format!("Debian {s}"));
    step(&format!("VM kernel {} (linux-image-*-{}-unsigned from {from})", spec.name, arch.debian));
    let started = Instant::now();
    let apt = apt_for(cache, spec, arch)?;
    let meta = meta_package(arch);
    let (package, version) = match kernel_package(&apt, arch) {
        Ok(found) if found.0.starts_with(&format!("linux-image-{}.", spec.name)) => found,
        Ok((package, _)) => bail!(
            "{meta} of {from} is {package}, not a {} kernel: the suite moved on; \
             update KERNELS in xtask/src/vm/kernel.rs",
            spec.name
        ),
        Err(e) => match newest_cached_kernel(cache, spec, arch) {
            Some(id) => {
                eprintln!("    warning: cannot ask apt for the kernel package ({e:#}); using the cached {id}");
                let (p, v) = id.split_once('_').context("cached kernel directory name")?;
                (p.to_string(), v.to_string())
            }
            None => {
                return Err(e.context(format!(
                    "cannot name the kernel package and none is cached: check that apt works \
                     (`apt-get update && apt-cache depends {meta}`)"
                )))
            }
        },
    };
    let id = format!("{package}_{version}");
    let dir = cache.join("kernel").join(&id);
    let stamp = modules_stamp();
    if fs::read_to_string(dir.join("stamp")).ok().as_deref() != Some(stamp.as_str()) {
        let deb = apt.deb(&cache.join("debs"), &for_arch(&package, arch), &version)?;
        unpack_kernel(&deb, &dir, &stamp, arch)?;
    }
    let kernel = load_kernel(&dir, id)?;
    eprintln!("    {} ({}) ready in {}", kernel.id, kernel.release, secs(started.elapsed()));
    Ok(kernel)
}

/// What an unpacked kernel directory holds; a change re-extracts it.
fn modules_stamp() -> String {
    format!("format 3, modules: {}\n", MODULES.join(" "))
}

/// Unpacks `deb` with `dpkg -x` into a scratch directory and keeps the kernel
/// image and the [`MODULES`] (decompressed) in `dir`.
fn unpack_kernel(deb: &Path, dir: &Path, stamp: &str, arch: &Arch) -> Result<()> {
    let started = Instant::now();
    let parent = dir.parent().context("kernel cache directory has no parent")?;
    fs::create_dir_all(parent)?;
    let scratch = parent.join(format!(".unpack-{}", std::process::id()));
    let staged = parent.join(format!(".staged-{}", std::process::id()));
    for d in [&scratch, &staged] {
        if d.exists() {
            fs::remove_dir_all(d).with_context(|| format!("removing {}", d.display()))?;
        }
    }
    eprintln!("    dpkg -x {}", deb.display());
    run_cmd(Command::new("dpkg").arg("-x").arg(deb).arg(&scratch))?;
    let result = (|| -> Result<()> {
        let boot = scratch.join("boot");
        let vmlinuz = fs::read_dir(&boot)
            .with_context(|| format!("{} has no boot/ directory: is it a kernel package?", deb.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("vmlinuz-")))
            .with_context(|| format!("{} has no boot/vmlinuz-*", deb.display()))?;
        let release = vmlinuz
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("vmlinuz-"))
            .context("kernel image name")?
            .to_string();
        // Under /usr on merged-/usr releases (trixie on).
        let mod_root = ["lib/modules", "usr/lib/modules"]
            .iter()
            .map(|d| scratch.join(d).join(&release))
            .find(|d| d.is_dir())
            .with_context(|| format!("{} has no lib/modules/{release} (nor usr/lib/modules/{release})", deb.display()))?;
        let mut found = Vec::new();
        collect_modules(&mod_root.join("kernel"), &mut found)?;
        let builtin_list = fs::read_to_string(mod_root.join("modules.builtin")).unwrap_or_default();
        let is_builtin = |name: &str| builtin_list.lines().any(|l| module_name(Path::new(l)).as_deref() == Some(name));
        let modules_dir = staged.join("modules");
        fs::create_dir_all(&modules_dir)?;
        let mut depends = Vec::new();
        for name in MODULES {
            let file = found.iter().find(|p| module_name(p).as_deref() == Some(*name));
            match file {
                Some(file) => {
                    let ko = modules_dir.join(format!("{name}.ko"));
                    decompress_module(file, &ko)?;
                    let bytes = fs::read(&ko).with_context(|| format!("reading {}", ko.display()))?;
                    depends.push((name.to_string(), modinfo_depends(&bytes)));
                }
                None if is_builtin(name) || MODULES_NOT_IN_EVERY_KERNEL.contains(name) => {}
                None => bail!(
                    "module {name} is neither in {} nor built into it: the VM cannot mount the host's \
                     file system (is this the generic amd64 flavour? the cloud one has no 9p)",
                    deb.display()
                ),
            }
        }
        let order = load_order(&depends, is_builtin)?;
        fs::copy(&vmlinuz, staged.join("vmlinuz"))?;
        // arm64's vmlinuz is a gzipped Image, which QEMU unpacks itself.
        if arch.target_arch == "x86_64" {
            match extract_pvh_vmlinux(&vmlinuz, &staged.join("vmlinux")) {
                Ok(()) => eprintln!("    extracted an uncompressed vmlinux with a PVH entry (boots about 2s faster)"),
                Err(e) => {
                    let _ = fs::remove_file(staged.join("vmlinux"));
                    eprintln!("    note: booting the compressed vmlinuz ({e:#})");
                }
            }
        }
        fs::write(staged.join("release"), format!("{release}\n"))?;
        fs::write(staged.join("load_order"), order.join("\n"))?;
        fs::write(staged.join("stamp"), stamp)?;
        if dir.exists() {
            fs::remove_dir_all(dir).with_context(|| format!("removing stale {}", dir.display()))?;
        }
        fs::rename(&staged, dir).with_context(|| format!("moving the unpacked kernel to {}", dir.display()))?;
        Ok(())
    })();
    let _ = fs::remove_dir_all(&scratch);
    let _ = fs::remove_dir_all(&staged);
    result?;
    eprintln!("    unpacked into {} in {}", dir.display(), secs(started.elapsed()));
    Ok(())
}

/// Reads an unpacked kernel directory written by [`unpack_kernel`].
fn load_kernel(dir: &Path, id: String) -> Result<Kernel> {
    let release = fs::read_to_string(dir.join("release"))
        .with_context(|| format!("{} is incomplete: delete it and run again", dir.display()))?
        .trim()
        .to_string();
    let load_order = fs::read_to_string(dir.join("load_order"))
        .with_context(|| format!("{} is incomplete: delete it and run again", dir.display()))?
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    let image = [dir.join("vmlinux"), dir.join("vmlinuz")]
        .into_iter()
        .find(|p| p.is_file())
        .with_context(|| format!("{} has no kernel image: delete it and run again", dir.display()))?;
    Ok(Kernel { id, release, image, modules: dir.join("modules"), load_order })
}
