//! `cargo xtask vm -- <command>`: runs a command inside a QEMU VM booted
//! with one of Debian's stock kernels (6.1 by default; 5.10 and 6.12 with
//! `--kernel`), which (unlike the host kernel) allow kprobes, fentry/fexit
//! and BPF LSM programs; x86-64 by default, arm64 with `--arch arm64`.
//!
//! How it works:
//!
//! * The kernel comes from the Debian package
//!   `linux-image-6.1.0-NN-<arch>-unsigned` (NN is what `linux-image-<arch>`
//!   depends on), fetched with `apt-get download` into `<repo>/.cache/vm/debs/`
//!   and unpacked with `dpkg -x`; the kernel image and the few modules the
//!   guest needs are kept in `<repo>/.cache/vm/kernel/<package>_<version>/`,
//!   on x86-64 with the uncompressed `vmlinux` taken out of `vmlinuz`: QEMU
//!   boots it through its PVH entry, which saves the guest seconds of
//!   decompression under TCG.
//! * A tiny initramfs (static busybox, the virtio and 9p modules, and an
//!   `/init` script) is built into `<repo>/.cache/vm/initramfs-<release>.cpio`
//!   and rebuilt whenever its inputs change.
//! * QEMU runs with TCG (a stock kernel hangs under KVM on this machine), on
//!   x86-64 the qboot firmware, and 9p shares: the guest's root, read-only
//!   (the host's `/`, or for another architecture a root of its own,
//!   `userland.rs`), a fresh writable run directory
//!   `<repo>/.cache/vm/runs/<id>/`, and, when the working directory lies
//!   under `/tmp` or `/run` (which the guest covers with fresh tmpfs) or
//!   the root is not the host's, that directory again (`cgcwd`). `/init`
//!   `switch_root`s into that root, so on the machine's architecture the
//!   guest runs the host's own node, binaries and test files at the same
//!   paths.
//! * The run directory is mounted at [`GUEST_SHARE`] in the guest; its `out/`
//!   subdirectory is [`GUEST_OUT`], exported to the command as `CG_VM_OUT`.
//!   `/init` writes the command's exit code, `uname -r` and the active LSMs
//!   into the run directory, prints them as `CG_VM_<KEY>=<value>` marker
//!   lines on the serial console, then powers the VM off. The harness takes
//!   the exit code from the file (the marker line is only a fallback).
//! * QEMU runs under `setpriv --pdeathsig KILL`, so it dies with us (Ctrl-C,
//!   kill), and is killed when the timeout expires.
//!
//! The parts, one file each:
//!
//! * `cli.rs`: the `cargo xtask vm` verb: its arguments, messages and exit
//!   code.
//! * `kernel.rs`: the Debian kernel package: naming it with apt, the
//!   download, `dpkg -x`, and the unpacked kernel in the cache.
//! * `modules.rs`: the kernel modules the guest needs: found in the
//!   package, decompressed, and put in load order.
//! * `image.rs`: the kernel image: the ELF `vmlinux` with a PVH entry,
//!   taken out of the bzImage `vmlinuz`.
//! * `initramfs.rs`: the guest's `/init` and the cpio archive it is packed
//!   in, rebuilt when its inputs change.
//! * `run_dir.rs`: one run's directory: `command.sh`, `stage2.sh`, and what
//!   the guest writes back.
//! * `userland.rs`: the root file system of a guest of another
//!   architecture.
//! * `qemu.rs`: booting QEMU (the machine of each architecture) with its 9p
//!   shares, streaming the console (or writing it to a log), the timeout,
//!   and collecting the results.
//!
//! This file holds the public entry points: [`run`] (or [`prepare`] then
//! [`run_prepared`], for VMs side by side), its options and outcome, and
//! the constants the callers use.

mod cli;
mod image;
mod initramfs;
mod kernel;
mod modules;
mod qemu;
mod run_dir;
mod userland;

use std::{
    fmt, fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use xtask::{require_root, root, secs};

pub use self::{
    cli::{cli, VmArgs},
    kernel::{kernel_spec, parse_kernel, Files, KernelSpec, DEFAULT_KERNEL, DEFAULT_RUN},
};
use self::{
    initramfs::ensure_initramfs,
    kernel::ensure_kernel,
    qemu::{boot, check_cwd},
    run_dir::{new_run_dir, write_command_script},
};

/// Debian packages the VM needs, and why.
const APT_PACKAGES: &[(&str, &str)] = &[
    ("busybox-static", "the shell and tools of the VM's initramfs"),
    ("cpio", "packs the VM's initramfs"),
    ("xz-utils", "decompresses the kernel image (and modules shipped as .ko.xz)"),
    ("debian-archive-keyring", "verifies the other Debian suites' kernels (bullseye, trixie) fetched through our own apt configuration"),
];

/// Where the writable run directory is mounted inside the guest (in the
/// chroot, on the guest's own tmpfs `/run`).
pub const GUEST_SHARE: &str = "/run/cg-vm";

/// Where the command's results go inside the guest (`CG_VM_OUT`); it is the
/// `out/` subdirectory of the run directory on the host.
pub const GUEST_OUT: &str = "/run/cg-vm/out";

/// What to run in the VM and how big the VM is.
#[derive(Debug, Clone)]
pub struct VmOptions {
    /// The program and its arguments, run in the guest (looked up in `PATH`).
    pub command: Vec<String>,
    /// Extra environment variables for the command; they override the
    /// defaults (`CG_VM`, `CG_VM_OUT`, `HOME`, `PATH`, `RUSTUP_HOME`).
    pub env: Vec<(String, String)>,
    /// Working directory of the command: a host path, which is the same path
    /// in the guest. Must not be under `/tmp`, `/run`, `/proc`, `/sys` or
    /// `/dev`, which the guest replaces with its own file systems.
    pub cwd: PathBuf,
    /// QEMU is killed after this long.
    pub timeout: Duration,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Guest CPUs.
    pub cpus: u32,
    /// Extra kernel command line arguments.
    pub kernel_args: Vec<String>,
    /// Which kernel to boot (`kernel.rs` lists them).
    pub kernel: KernelSpec,
    /// A file for the guest's console and the messages about the boot
    /// instead of stdout and stderr, for VMs run side by side.
    pub log: Option<PathBuf>,
}

impl Default for VmOptions {
    fn default() -> Self {
        VmOptions {
            command: Vec::new(),
            env: Vec::new(),
            cwd: root(),
            timeout: Duration::from_secs(900),
            memory_mib: 2048,
            cpus: 2,
            kernel_args: Vec::new(),
            kernel: kernel_spec(DEFAULT_KERNEL).expect("DEFAULT_KERNEL is in KERNELS"),
            log: None,
        }
    }
}

/// How a VM run ended.
#[derive(Debug, Clone)]
pub struct VmOutcome {
    /// The guest command's exit code (128 + n if a signal n killed it, 125 if
    /// its working directory was missing, 127 if it was not found).
    pub exit_code: i32,
    /// `uname -r` in the guest, e.g. `6.1.0-56-amd64`.
    pub kernel_release: String,
    /// The guest's active LSMs (`/sys/kernel/security/lsm`), e.g.
    /// `lockdown,capability,landlock,yama,apparmor,tomoyo,bpf`.
    pub lsm: String,
    /// The host directory the guest saw as `CG_VM_OUT` (`<run_dir>/out`).
    pub out_dir: PathBuf,
    /// The run directory on the host: `out/` plus the harness's files
    /// (`command.sh`, `exit_code`, `kernel_release`, `lsm`).
    pub run_dir: PathBuf,
    /// From starting QEMU to the moment the command started.
    pub boot_time: Duration,
    /// From starting QEMU to QEMU's exit.
    pub vm_time: Duration,
}

impl VmOutcome {
    /// Whether BPF LSM programs can run in the guest (`bpf` is among its
    /// active LSMs).
    pub fn bpf_lsm_active(&self) -> bool {
        self.lsm.split(',').any(|l| l.trim() == "bpf")
    }
}

/// The error [`run`] returns when the VM ran past [`VmOptions::timeout`]
/// (QEMU has been killed by then).
#[derive(Debug)]
pub struct VmTimeout {
    /// The timeout that expired.
    pub after: Duration,
    /// The run directory, with whatever the guest wrote before it was killed.
    pub run_dir: PathBuf,
}

impl fmt::Display for VmTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the VM ran longer than the timeout of {}s and was killed (partial results in {}); \
             give it more time with --timeout SECS",
            self.after.as_secs(),
            self.run_dir.display()
        )
    }
}

impl std::error::Error for VmTimeout {}

/// Boots the VM, runs `opts.command` in it, and returns how it ended; the
/// guest's console output streams to our stdout meanwhile (or to
/// [`VmOptions::log`]), the harness's messages go to stderr. Needs root.
///
/// Fails with [`VmTimeout`] (find it with `err.downcast_ref`) when the
/// timeout expired, and with an explanation when the guest ended without
/// reporting an exit code (e.g. a kernel panic).
pub fn run(opts: &VmOptions) -> Result<VmOutcome> {
    let started = Instant::now();
    let prepared = prepare(&opts.kernel, &check_cwd(&opts.cwd)?)?;
    if opts.log.is_none() {
        eprintln!("    prepared in {}", secs(started.elapsed()));
    }
    run_prepared(opts, &prepared)
}

/// A kernel, its initramfs and the guest's root, ready to boot.
pub struct Prepared {
    spec: KernelSpec,
    kernel: kernel::Kernel,
    initramfs: PathBuf,
    /// The host's `/`, or another architecture's userland.
    root: PathBuf,
}

/// Makes sure everything a boot of `spec` needs is installed, downloaded
/// and unpacked (for another architecture than the machine's, with `cwd`
/// in its root), as [`run`] does first. VMs started side by side are prepared
/// beforehand and booted with [`run_prepared`], so none of them writes the
/// cache or prints outside its log.
pub fn prepare(spec: &KernelSpec, cwd: &Path) -> Result<Prepared> {
    require_root("cargo xtask vm (QEMU shares the whole host file system with the guest)")?;
    let arch = spec.arch;
    let machine = qemu::machine(arch);
    crate::setup::apt(APT_PACKAGES)?;
    crate::setup::apt(&[(machine.package, "runs the test VM")])?;
    for tool in [machine.qemu, "busybox", "cpio", "setpriv"] {
        if which(tool).is_none() {
            bail!(
                "`{tool}` is not on PATH although its package is installed: \
                 run `apt-get install --reinstall {} busybox-static cpio util-linux`",
                machine.package
            );
        }
    }
    let cache = cache_dir();
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let kernel = ensure_kernel(&cache, spec)?;
    let root = if arch.is_host() { PathBuf::from("/") } else { userland::ensure_userland(&cache, arch, cwd)? };
    let initramfs = ensure_initramfs(&cache, &kernel, &root.join("bin/busybox"))?;
    Ok(Prepared { spec: *spec, kernel, initramfs, root })
}

impl Prepared {
    /// The kernel it is for.
    pub fn spec(&self) -> &KernelSpec {
        &self.spec
    }
}

/// [`run`] with what [`prepare`] made ready for `opts.kernel`.
pub fn run_prepared(opts: &VmOptions, prepared: &Prepared) -> Result<VmOutcome> {
    if opts.command.is_empty() {
        bail!("no command to run in the VM: give one after `--`, e.g. `cargo xtask vm -- uname -r`");
    }
    if opts.cpus == 0 || opts.memory_mib < 256 {
        bail!("the VM needs at least 1 CPU and 256 MiB (asked: {} CPUs, {} MiB)", opts.cpus, opts.memory_mib);
    }
    if opts.kernel != prepared.spec {
        bail!("internal: the VM was prepared for kernel {}, not {}", prepared.spec.label(), opts.kernel.label());
    }
    let cwd = check_cwd(&opts.cwd)?;
    let run_dir = new_run_dir(&cache_dir())?;
    write_command_script(&run_dir, opts, &cwd)?;
    boot(opts, &prepared.kernel, &prepared.initramfs, &run_dir, &prepared.root)
}

/// `<repo>/.cache/vm`.
fn cache_dir() -> PathBuf {
    root().join(".cache/vm")
}

/// The full path of `program` on PATH, if any.
fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file())
}

