//! `cargo xtask vm -- <command>`: runs a command inside a QEMU VM booted
//! with one of Debian's stock kernels (6.1 by default; 5.10 and 6.12 with
//! `--kernel`), which (unlike the host kernel) allow kprobes, fentry/fexit
//! and BPF LSM programs.
//!
//! How it works:
//!
//! * The kernel comes from the Debian package
//!   `linux-image-6.1.0-NN-amd64-unsigned` (NN is what `linux-image-amd64`
//!   depends on), fetched with `apt-get download` into `<repo>/.cache/vm/debs/`
//!   and unpacked with `dpkg -x`; the kernel image and the few modules the
//!   guest needs are kept in `<repo>/.cache/vm/kernel/<package>_<version>/`,
//!   with the uncompressed `vmlinux` taken out of `vmlinuz`: QEMU boots it
//!   through its PVH entry, which saves the guest seconds of decompression
//!   under TCG.
//! * A tiny initramfs (static busybox, the virtio and 9p modules, and an
//!   `/init` script) is built into `<repo>/.cache/vm/initramfs.cpio` and
//!   rebuilt whenever its inputs change.
//! * QEMU runs with TCG (a stock kernel hangs under KVM on this machine), the
//!   qboot firmware, and 9p shares: the host's `/`, read-only, a fresh
//!   writable run directory `<repo>/.cache/vm/runs/<id>/`, and, when the
//!   working directory lies under `/tmp` or `/run` (which the guest covers
//!   with fresh tmpfs), that directory again (`cgcwd`). `/init`
//!   `switch_root`s into the host's root, so the guest runs the host's own
//!   node, binaries and test files at the same paths.
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
//! * `qemu.rs`: booting QEMU with its 9p shares, streaming the console,
//!   the timeout, and collecting the results.
//!
//! This file holds the public entry points: [`run`], its options and
//! outcome, and the constants the callers use.

mod cli;
mod image;
mod initramfs;
mod kernel;
mod modules;
mod qemu;
mod run_dir;

use std::{
    fmt, fs,
    path::PathBuf,
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
    ("qemu-system-x86", "qemu-system-x86_64 runs the test VM"),
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
/// guest's console output streams to our stdout meanwhile, the harness's
/// messages go to stderr. Needs root.
///
/// Fails with [`VmTimeout`] (find it with `err.downcast_ref`) when the
/// timeout expired, and with an explanation when the guest ended without
/// reporting an exit code (e.g. a kernel panic).
pub fn run(opts: &VmOptions) -> Result<VmOutcome> {
    let started = Instant::now();
    if opts.command.is_empty() {
        bail!("no command to run in the VM: give one after `--`, e.g. `cargo xtask vm -- uname -r`");
    }
    if opts.cpus == 0 || opts.memory_mib < 256 {
        bail!("the VM needs at least 1 CPU and 256 MiB (asked: {} CPUs, {} MiB)", opts.cpus, opts.memory_mib);
    }
    let cwd = check_cwd(&opts.cwd)?;
    require_root("cargo xtask vm (QEMU shares the whole host file system with the guest)")?;
    crate::setup::apt(APT_PACKAGES)?;
    for tool in ["qemu-system-x86_64", "busybox", "cpio", "setpriv"] {
        if which(tool).is_none() {
            bail!(
                "`{tool}` is not on PATH although its package is installed: \
                 run `apt-get install --reinstall qemu-system-x86 busybox-static cpio util-linux`"
            );
        }
    }
    let cache = cache_dir();
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;

    let kernel = ensure_kernel(&cache, &opts.kernel)?;
    let initramfs = ensure_initramfs(&cache, &kernel)?;
    let run_dir = new_run_dir(&cache)?;
    write_command_script(&run_dir, opts, &cwd)?;
    eprintln!("    prepared in {}", secs(started.elapsed()));

    boot(opts, &kernel, &initramfs, &run_dir)
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

