//! `cargo xtask vm -- <command>`: runs a command inside a QEMU VM booted
//! with Debian's stock 6.1 kernel, which (unlike the host kernel) allows
//! kprobes, fentry/fexit and BPF LSM programs.
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
//!   qboot firmware, and two 9p shares: the host's `/`, read-only, and a fresh writable run
//!   directory `<repo>/.cache/vm/runs/<id>/`. `/init` chroots into the host's
//!   root, so the guest runs the host's own node, binaries and test files at
//!   the same paths, with fresh tmpfs on `/tmp` and `/run`.
//! * The run directory is mounted at [`GUEST_SHARE`] in the guest; its `out/`
//!   subdirectory is [`GUEST_OUT`], exported to the command as `CG_VM_OUT`.
//!   `/init` writes the command's exit code, `uname -r` and the active LSMs
//!   into the run directory, prints them as `CG_VM_<KEY>=<value>` marker
//!   lines on the serial console, then powers the VM off. The harness takes
//!   the exit code from the file (the marker line is only a fallback).
//! * QEMU runs under `setpriv --pdeathsig KILL`, so it dies with us (Ctrl-C,
//!   kill), and is killed when the timeout expires.

use std::{
    fmt,
    fs::{self, File},
    io::{BufRead, BufReader, Write},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};
use xtask::{output, require_root, root, run as run_cmd, step};

/// Debian packages the VM needs, and why.
const APT_PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-x86", "qemu-system-x86_64 runs the test VM"),
    ("busybox-static", "the shell and tools of the VM's initramfs"),
    ("cpio", "packs the VM's initramfs"),
    ("xz-utils", "decompresses the kernel image (and modules shipped as .ko.xz)"),
];

/// The meta package whose dependency names the current kernel package.
const KERNEL_META_PACKAGE: &str = "linux-image-amd64";

/// Kernel modules the initramfs needs: the virtio PCI transport and 9p. They
/// are loaded in the order their `depends=` fields demand (in 6.1.0-56,
/// virtio needs virtio_ring, fscache needs netfs), else in this order.
const MODULES: &[&str] = &[
    "virtio",
    "virtio_ring",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "netfs",
    "fscache",
    "9pnet",
    "9pnet_virtio",
    "9p",
];

/// Where the writable run directory is mounted inside the guest (in the
/// chroot, on the guest's own tmpfs `/run`).
pub const GUEST_SHARE: &str = "/run/cg-vm";

/// Where the command's results go inside the guest (`CG_VM_OUT`); it is the
/// `out/` subdirectory of the run directory on the host.
pub const GUEST_OUT: &str = "/run/cg-vm/out";

/// `PATH` inside the guest. rustup's directory comes first, as on the host,
/// so `cargo` and `rustc` are the host's rustup toolchain, not Debian's
/// rustc-web in /usr/bin.
const GUEST_PATH: &str = "/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// qboot, a minimal firmware shipped with QEMU (qemu-system-data): it boots
/// faster than SeaBIOS and prints nothing on the serial console.
const QBOOT: &str = "/usr/share/qemu/qboot.rom";

/// How many run directories to keep under `.cache/vm/runs/`; older ones are
/// deleted when a new run starts.
const KEEP_RUNS: usize = 20;

/// Bumped whenever the initramfs layout changes in a way the stamp would not
/// otherwise notice.
const INITRAMFS_FORMAT: u32 = 3;

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

/// Command line of `cargo xtask vm`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example: cargo xtask vm -- uname -r   (--help shows more)",
    after_long_help = "The VM boots Debian's stock 6.1 kernel under QEMU (TCG), which allows kprobes, \
fentry/fexit and BPF LSM programs, unlike the host kernel. Needs root.

The guest chroots into the host's root file system, shared read-only over 9p, so the same node, \
binaries and files are at the same paths; /tmp, /run and /dev/shm are fresh tmpfs; proc, sysfs, \
devtmpfs, devpts, securityfs, bpffs, tracefs and cgroup2 are mounted. The command runs with stdin \
from /dev/null and its output on the serial console, which streams to our stdout (kernel messages of \
level warning and above too); our own messages go to stderr. This verb exits with the command's exit \
code: 125 if --cwd is missing in the guest, 127 if the command is not found, 124 on timeout. \
Ctrl-C (or killing this process) kills the VM.

Environment of the command (nothing else is inherited from the host):
  CG_VM=1
  CG_VM_OUT=/run/cg-vm/out   writable; its files appear on the host in .cache/vm/runs/<id>/out/
  HOME=/tmp
  PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  RUSTUP_HOME=/root/.rustup  (when the host has it)
  and every --env K=V (these win).

Cached in <repo>/.cache/vm/ (ignored by git):
  debs/          the kernel package, fetched with `apt-get download`
  kernel/<pkg>/  its kernel image and the virtio/9p modules (from `dpkg -x`)
  initramfs.cpio busybox, the modules and /init; rebuilt when its inputs change
  runs/<id>/     one per run: command.sh, exit_code, kernel_release, lsm, out/ (the newest 20 are kept)
Missing apt packages (qemu-system-x86, busybox-static, cpio, xz-utils) are installed first.

Examples:
  cargo xtask vm -- uname -r
  cargo xtask vm -- sh -c 'cat /sys/kernel/security/lsm > $CG_VM_OUT/lsm'
  cargo xtask vm --env FOO=1 --cwd test -- sh -c 'echo $FOO; pwd'
  cargo xtask vm --timeout 60 -- node -e 'console.log(process.version)'"
)]
pub struct VmArgs {
    /// Kill the VM (and fail with exit code 124) after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 900)]
    timeout: u64,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 2048)]
    memory: u32,
    /// Guest CPUs.
    #[arg(long, value_name = "N", default_value_t = 2)]
    cpus: u32,
    /// Set an environment variable for the command (repeatable); overrides the defaults.
    #[arg(long = "env", value_name = "K=V", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Working directory of the command: a host path, the same in the guest [default: the repository root].
    #[arg(long, value_name = "DIR")]
    cwd: Option<PathBuf>,
    /// Extra kernel command line argument (repeatable), e.g. --kernel-arg loglevel=7.
    #[arg(long = "kernel-arg", value_name = "ARG")]
    kernel_args: Vec<String>,
    /// The command to run in the guest, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// Parses `K=V` for `--env`.
fn parse_env(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("`{s}` is not K=V"))?;
    if !is_shell_name(k) {
        return Err(format!("`{k}` is not a valid environment variable name (letters, digits, _)"));
    }
    Ok((k.to_string(), v.to_string()))
}

fn is_shell_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// `cargo xtask vm`: runs the command in the VM and exits with its exit
/// code (124 when the timeout killed the VM).
pub fn cli(args: VmArgs) -> Result<()> {
    let cwd = match args.cwd {
        Some(dir) => std::env::current_dir().context("current directory")?.join(dir),
        None => root(),
    };
    let opts = VmOptions {
        command: args.command,
        env: args.env,
        cwd,
        timeout: Duration::from_secs(args.timeout),
        memory_mib: args.memory,
        cpus: args.cpus,
        kernel_args: args.kernel_args,
    };
    let started = Instant::now();
    match run(&opts) {
        Ok(outcome) => {
            if !outcome.bpf_lsm_active() {
                eprintln!(
                    "    warning: BPF LSM is not active in the guest (LSMs: {}); enable it with --kernel-arg lsm={},bpf",
                    outcome.lsm, outcome.lsm
                );
            }
            eprintln!(
                "    guest {} exited with {}; boot {}, command {}, VM {}, total {}\n    \
                 run directory {}, CG_VM_OUT files in {}",
                outcome.kernel_release,
                outcome.exit_code,
                secs(outcome.boot_time),
                secs(outcome.vm_time.saturating_sub(outcome.boot_time)),
                secs(outcome.vm_time),
                secs(started.elapsed()),
                outcome.run_dir.display(),
                outcome.out_dir.display()
            );
            if outcome.exit_code != 0 {
                std::process::exit(outcome.exit_code);
            }
            Ok(())
        }
        Err(e) if e.is::<VmTimeout>() => {
            eprintln!("error: {e}");
            std::process::exit(124);
        }
        Err(e) => Err(e),
    }
}

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

    let kernel = ensure_kernel(&cache)?;
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

/// Directories the guest replaces with its own file systems. A working
/// directory under `/tmp` or `/run` (a clone in /tmp, say) is shared with
/// the guest separately and mounted back at the same path.
const REPLACED: [&str; 5] = ["/tmp", "/run", "/proc", "/sys", "/dev"];

/// Makes `cwd` absolute and checks it exists and can be made visible in the
/// guest.
fn check_cwd(cwd: &Path) -> Result<PathBuf> {
    let dir = fs::canonicalize(cwd)
        .with_context(|| format!("working directory {} does not exist on the host", cwd.display()))?;
    if !dir.is_dir() {
        bail!("working directory {} is not a directory", dir.display());
    }
    for hidden in ["/proc", "/sys", "/dev"] {
        if dir.starts_with(hidden) {
            bail!("working directory {} is under {hidden}, which the guest replaces: use another directory", dir.display());
        }
    }
    if needs_own_share(&dir) && dir.to_string_lossy().chars().any(|c| c.is_whitespace() || c == ',') {
        bail!("working directory {} is under /tmp or /run and has a space or comma in its path: move it", dir.display());
    }
    Ok(dir)
}

/// Whether `dir` is hidden by the guest's own `/tmp` or `/run` and needs a
/// share of its own.
fn needs_own_share(dir: &Path) -> bool {
    REPLACED[..2].iter().any(|h| dir.starts_with(h))
}

/// The full path of `program` on PATH, if any.
fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file())
}

/// Seconds with one decimal, e.g. `3.1s`.
fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

// ---------------------------------------------------------------------------
// The kernel package
// ---------------------------------------------------------------------------

/// An unpacked kernel: the image and the modules the initramfs needs.
#[derive(Debug)]
struct Kernel {
    /// e.g. `linux-image-6.1.0-56-amd64-unsigned_6.1.192-2`.
    id: String,
    /// `uname -r` of this kernel, e.g. `6.1.0-56-amd64`.
    release: String,
    /// The kernel image QEMU boots: the uncompressed `vmlinux` (PVH entry,
    /// which skips the slow decompression under TCG) when it could be
    /// extracted, else the package's `vmlinuz`.
    image: PathBuf,
    /// Directory with `<module>.ko` for every entry of [`MODULES`] that is
    /// not built into the kernel.
    modules: PathBuf,
    /// The modules to insert, dependencies first (built-in ones left out).
    load_order: Vec<String>,
}

/// Names the kernel package and its candidate version with apt-cache,
/// running `apt-get update` once if apt knows nothing yet.
fn kernel_package() -> Result<(String, String)> {
    match kernel_package_from_apt() {
        Ok(found) => Ok(found),
        Err(first) => {
            eprintln!("    apt does not know the kernel package yet ({first:#}); running apt-get update");
            run_cmd(Command::new("apt-get").args(["update", "-q"]).env("DEBIAN_FRONTEND", "noninteractive"))
                .context("apt-get update failed: check the network and /etc/apt/sources.list*")?;
            kernel_package_from_apt()
        }
    }
}

/// One `apt-cache show` of the meta package: its `Depends:` names the
/// signed image package with an exact version (`linux-image-6.1.0-56-amd64
/// (= 6.1.192-2)`); the unsigned package of the same source has that version.
fn kernel_package_from_apt() -> Result<(String, String)> {
    let show = output(Command::new("apt-cache").args(["show", "--no-all-versions", KERNEL_META_PACKAGE]))?;
    let depends = show
        .lines()
        .find_map(|l| l.strip_prefix("Depends:"))
        .with_context(|| format!("`apt-cache show {KERNEL_META_PACKAGE}` has no Depends line"))?;
    let (image, pinned) = depends
        .split(',')
        .map(str::trim)
        .find_map(|dep| {
            let (name, rest) = dep.split_once(' ').unwrap_or((dep, ""));
            let version = rest.trim().strip_prefix("(=").and_then(|v| v.strip_suffix(')')).map(str::trim);
            name.starts_with("linux-image-").then(|| (name.to_string(), version.map(str::to_string)))
        })
        .with_context(|| format!("{KERNEL_META_PACKAGE} depends on no linux-image package: {}", depends.trim()))?;
    let package = if image.ends_with("-unsigned") { image } else { format!("{image}-unsigned") };
    let version = match pinned {
        Some(v) => v,
        None => output(Command::new("apt-cache").args(["policy", &package]))?
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Candidate:"))
            .map(str::trim)
            .find(|v| !v.is_empty() && *v != "(none)")
            .with_context(|| format!("apt has no candidate version of {package}"))?
            .to_string(),
    };
    Ok((package, version))
}

/// The newest complete unpacked kernel in the cache, for offline use.
fn newest_cached_kernel(cache: &Path) -> Option<String> {
    let mut ids: Vec<String> = fs::read_dir(cache.join("kernel"))
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("stamp").is_file())
        .filter_map(|e| e.file_name().into_string().ok())
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
fn ensure_kernel(cache: &Path) -> Result<Kernel> {
    step("VM kernel (Debian linux-image-*-amd64-unsigned)");
    let started = Instant::now();
    let (package, version) = match kernel_package() {
        Ok(found) => found,
        Err(e) => match newest_cached_kernel(cache) {
            Some(id) => {
                eprintln!("    warning: cannot ask apt for the kernel package ({e:#}); using the cached {id}");
                let (p, v) = id.split_once('_').context("cached kernel directory name")?;
                (p.to_string(), v.to_string())
            }
            None => {
                return Err(e.context(
                    "cannot name the kernel package and none is cached: check that apt works \
                     (`apt-get update && apt-cache depends linux-image-amd64`)",
                ))
            }
        },
    };
    let id = format!("{package}_{version}");
    let dir = cache.join("kernel").join(&id);
    let stamp = modules_stamp();
    if fs::read_to_string(dir.join("stamp")).ok().as_deref() != Some(stamp.as_str()) {
        let deb = ensure_deb(cache, &package, &version)?;
        unpack_kernel(&deb, &dir, &stamp)?;
    }
    let kernel = load_kernel(&dir, id)?;
    eprintln!("    {} ({}) ready in {}", kernel.id, kernel.release, secs(started.elapsed()));
    Ok(kernel)
}

/// What an unpacked kernel directory holds; a change re-extracts it.
fn modules_stamp() -> String {
    format!("format 3, modules: {}\n", MODULES.join(" "))
}

/// The cached `.deb`, downloaded with `apt-get download` if missing.
fn ensure_deb(cache: &Path, package: &str, version: &str) -> Result<PathBuf> {
    let debs = cache.join("debs");
    fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
    let prefix = format!("{package}_{}_", version.replace(':', "%3a"));
    let find = || -> Option<PathBuf> {
        fs::read_dir(&debs).ok()?.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
    };
    if let Some(deb) = find() {
        eprintln!("    cached: {}", deb.display());
        return Ok(deb);
    }
    let started = Instant::now();
    eprintln!("    downloading {package}={version} into {}", debs.display());
    let download = |debs: &Path| {
        run_cmd(
            Command::new("apt-get")
                // apt's sandbox user _apt may not write into the repository.
                .args(["-o", "APT::Sandbox::User=root", "download"])
                .arg(format!("{package}={version}"))
                .current_dir(debs),
        )
    };
    if let Err(e) = download(&debs) {
        // Stale lists point at a version the mirror no longer has.
        eprintln!("    download failed ({e:#}); running apt-get update and trying again");
        run_cmd(Command::new("apt-get").args(["update", "-q"]).env("DEBIAN_FRONTEND", "noninteractive"))?;
        download(&debs).with_context(|| {
            format!(
                "cannot download {package}={version}: check the network and apt sources \
                 (`apt-get update && apt-cache policy {package}`)"
            )
        })?;
    }
    let deb = find().with_context(|| format!("apt-get download left no {prefix}*.deb in {}", debs.display()))?;
    let size = fs::metadata(&deb).map(|m| m.len()).unwrap_or(0);
    eprintln!("    downloaded {} ({} MB) in {}", deb.display(), size / 1_000_000, secs(started.elapsed()));
    Ok(deb)
}

/// Unpacks `deb` with `dpkg -x` into a scratch directory and keeps the kernel
/// image and the [`MODULES`] (decompressed) in `dir`.
fn unpack_kernel(deb: &Path, dir: &Path, stamp: &str) -> Result<()> {
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
        let mod_root = scratch.join("lib/modules").join(&release);
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
                None if is_builtin(name) => {}
                None => bail!(
                    "module {name} is neither in {} nor built into it: the VM cannot mount the host's \
                     file system (is this the generic amd64 flavour? the cloud one has no 9p)",
                    deb.display()
                ),
            }
        }
        let order = load_order(&depends, is_builtin)?;
        fs::copy(&vmlinuz, staged.join("vmlinuz"))?;
        match extract_pvh_vmlinux(&vmlinuz, &staged.join("vmlinux")) {
            Ok(()) => eprintln!("    extracted an uncompressed vmlinux with a PVH entry (boots about 2s faster)"),
            Err(e) => {
                let _ = fs::remove_file(staged.join("vmlinux"));
                eprintln!("    note: booting the compressed vmlinuz ({e:#})");
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

/// Every module file (`.ko`, `.ko.xz`, `.ko.zst`) under `dir`.
fn collect_modules(dir: &Path, into: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_modules(&path, into)?;
        } else if module_name(&path).is_some() {
            into.push(path);
        }
    }
    Ok(())
}

/// `foo` for `.../foo.ko`, `foo.ko.xz` or `foo.ko.zst`.
fn module_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let stem =
        name.strip_suffix(".ko").or_else(|| name.strip_suffix(".ko.xz")).or_else(|| name.strip_suffix(".ko.zst"))?;
    Some(stem.to_string())
}

/// Writes the ELF `vmlinux` inside the bzImage `vmlinuz` to `to`, if it is
/// compressed with xz, gzip or zstd and has a PVH entry point (QEMU can then
/// boot it directly, without the guest decompressing it, which takes seconds
/// under TCG).
fn extract_pvh_vmlinux(vmlinuz: &Path, to: &Path) -> Result<()> {
    let image = fs::read(vmlinuz).with_context(|| format!("reading {}", vmlinuz.display()))?;
    let u32_at = |at: usize| -> Option<u32> { Some(u32::from_le_bytes(image.get(at..at + 4)?.try_into().ok()?)) };
    // x86 boot protocol: the setup sectors, then the protected-mode code,
    // whose payload_offset/payload_length (at 0x248/0x24c) locate the
    // compressed kernel.
    if image.get(0x202..0x206) != Some(b"HdrS") {
        bail!("{} is not a bzImage", vmlinuz.display());
    }
    let setup_sects = match image.get(0x1f1).copied() {
        Some(0) => 4,
        Some(n) => usize::from(n),
        None => bail!("{} is truncated", vmlinuz.display()),
    };
    let start = (setup_sects + 1) * 512 + u32_at(0x248).context("bzImage payload_offset")? as usize;
    let len = u32_at(0x24c).context("bzImage payload_length")? as usize;
    let payload = image.get(start..start + len).context("bzImage payload out of bounds")?;
    let (tool, args): (&str, &[&str]) = if payload.starts_with(b"\xfd7zXZ\0") {
        ("xz", &["-dc", "--single-stream"])
    } else if payload.starts_with(&[0x1f, 0x8b]) {
        ("gzip", &["-dc"])
    } else if payload.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        ("zstd", &["-dc"])
    } else {
        bail!("the kernel payload's compression is not xz, gzip or zstd");
    };
    let out = File::create(to).with_context(|| format!("creating {}", to.display()))?;
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot run {tool}"))?;
    let mut stdin = child.stdin.take().context("decompressor stdin")?;
    // The payload may end with the 4-byte uncompressed size: decompressors
    // may complain about it, so the result is judged by its content below.
    let _ = stdin.write_all(payload);
    drop(stdin);
    child.wait().with_context(|| format!("waiting for {tool}"))?;
    let elf = fs::read(to).with_context(|| format!("reading {}", to.display()))?;
    if !has_pvh_note(&elf) {
        bail!("the decompressed kernel is not an ELF file with a PVH entry note");
    }
    Ok(())
}

/// Whether `elf` is a 64-bit little-endian ELF file with a
/// `XEN_ELFNOTE_PHYS32_ENTRY` note (type 18, name "Xen"): QEMU boots such
/// files through PVH.
fn has_pvh_note(elf: &[u8]) -> bool {
    const PT_NOTE: u32 = 4;
    const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
    let u16_at = |at: usize| elf.get(at..at + 2).and_then(|b| b.try_into().ok()).map(u16::from_le_bytes);
    let u32_at = |at: usize| elf.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
    let u64_at = |at: usize| elf.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return false;
    };
    let align4 = |n: usize| (n + 3) & !3;
    (0..usize::from(phnum)).any(|i| {
        let ph = phoff as usize + i * usize::from(phentsize);
        if u32_at(ph) != Some(PT_NOTE) {
            return false;
        }
        let (Some(offset), Some(size)) = (u64_at(ph + 8), u64_at(ph + 32)) else {
            return false;
        };
        let (mut at, end) = (offset as usize, offset as usize + size as usize);
        while at + 12 <= end {
            let (Some(namesz), Some(descsz), Some(kind)) = (u32_at(at), u32_at(at + 4), u32_at(at + 8)) else {
                return false;
            };
            let name = elf.get(at + 12..at + 12 + namesz as usize).unwrap_or_default();
            if kind == XEN_ELFNOTE_PHYS32_ENTRY && name.starts_with(b"Xen") {
                return true;
            }
            at += 12 + align4(namesz as usize) + align4(descsz as usize);
        }
        false
    })
}

/// The `depends=` field of a module's `.modinfo` section (the modules it
/// needs loaded first).
fn modinfo_depends(ko: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(at) = ko.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let value = &ko[at + KEY.len()..];
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end]).split(',').filter(|d| !d.is_empty()).map(str::to_string).collect()
}

/// Orders `(module, depends)` so every module comes after what it depends
/// on, keeping the given order otherwise. A dependency outside the list must
/// be built into the kernel.
fn load_order(modules: &[(String, Vec<String>)], is_builtin: impl Fn(&str) -> bool) -> Result<Vec<String>> {
    let mut order: Vec<String> = Vec::new();
    while order.len() < modules.len() {
        let next = modules.iter().find(|(name, deps)| {
            !order.contains(name)
                && deps.iter().all(|d| order.contains(d) || (!modules.iter().any(|(m, _)| m == d) && is_builtin(d)))
        });
        match next {
            Some((name, _)) => order.push(name.clone()),
            None => {
                let stuck: Vec<String> = modules
                    .iter()
                    .filter(|(name, _)| !order.contains(name))
                    .map(|(name, deps)| format!("{name} (needs {})", deps.join(", ")))
                    .collect();
                bail!(
                    "cannot order the VM's kernel modules: {} (a dependency missing from MODULES in xtask/src/vm.rs, \
                     or a cycle)",
                    stuck.join("; ")
                );
            }
        }
    }
    Ok(order)
}

/// Copies a module to `to`, decompressing `.xz` and `.zst`.
fn decompress_module(from: &Path, to: &Path) -> Result<()> {
    let tool = match from.extension().and_then(|e| e.to_str()) {
        Some("xz") => "xz",
        Some("zst") => "zstd",
        _ => {
            fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
            return Ok(());
        }
    };
    let out = File::create(to).with_context(|| format!("creating {}", to.display()))?;
    let status = Command::new(tool).arg("-dc").arg(from).stdout(out).status().with_context(|| {
        format!("cannot run {tool} to decompress {}: apt-get install xz-utils zstd", from.display())
    })?;
    if !status.success() {
        bail!("{tool} -dc {} failed with {status}", from.display());
    }
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

// ---------------------------------------------------------------------------
// The initramfs
// ---------------------------------------------------------------------------

/// The guest's `/init`: loads the 9p modules, mounts the host's root and the
/// run directory, and `switch_root`s into the host root, where `stage2.sh`
/// (see [`STAGE2`]) runs `command.sh`, reports and powers off. Markers are `CG_VM_<KEY>=<value>` lines on the console.
fn init_script(modules: &[&str]) -> String {
    format!(
        r#"#!/bin/sh
# The chroot-guard VM's /init (generated by xtask/src/vm.rs).
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs dev /dev
exec 0</dev/console 1>/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sys /sys

fail() {{
    echo "CG_VM_ERROR=$*"
    poweroff -f
    exit 1
}}

for m in {modules}; do
    insmod /lib/modules/$m.ko || fail "insmod $m"
done

R=/newroot
S=$R{share}
mkdir -p $R
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose host $R \
    || fail "mounting the host root (9p tag host)"
mount -t tmpfs -o mode=1777 tmpfs $R/tmp || fail "tmpfs on /tmp"
mount -t tmpfs -o mode=755 tmpfs $R/run || fail "tmpfs on /run"
# A working directory under /tmp or /run comes as its own share (cg_cwd=).
cwd=$(sed -n 's/.*cg_cwd=\([^ ]*\).*/\1/p' /proc/cmdline)
if [ -n "$cwd" ]; then
    mkdir -p $R$cwd && mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose cgcwd $R$cwd \
        || fail "mounting the working directory $cwd (9p tag cgcwd)"
fi
mkdir -p $S
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 cgvmout $S \
    || fail "mounting the run directory (9p tag cgvmout)"
mount -t proc proc $R/proc || fail "proc"
mount -t sysfs sys $R/sys || fail "sysfs"
mount -t devtmpfs dev $R/dev || fail "devtmpfs"
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts devpts $R/dev/pts || fail "devpts"
mount -t tmpfs -o mode=1777 tmpfs $R/dev/shm || fail "tmpfs on /dev/shm"
mount -t securityfs securityfs $R/sys/kernel/security || fail "securityfs"
mount -t bpf -o mode=0700 bpf $R/sys/fs/bpf || fail "bpffs"
mount -t tracefs tracefs $R/sys/kernel/tracing || fail "tracefs"
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup || fail "cgroup2"

uname -r > $S/kernel_release
cat $R/sys/kernel/security/lsm > $S/lsm
echo >> $S/lsm
echo "CG_VM_KERNEL=$(uname -r)"
echo "CG_VM_LSM=$(cat $R/sys/kernel/security/lsm)"
echo "CG_VM_READY=1"
# switch_root, not chroot: the host root becomes the mount namespace's root,
# as on a booted system, so absolute paths the kernel reports (a chroot's
# resolved new root) read as they do on the host.
exec switch_root $R /bin/busybox sh {share}/stage2.sh
fail "switch_root into the host root (is busybox-static installed on the host?)"
"#,
        modules = modules.join(" "),
        share = GUEST_SHARE,
    )
}

/// Builds `<cache>/initramfs.cpio` unless its stamp shows the same inputs.
fn ensure_initramfs(cache: &Path, kernel: &Kernel) -> Result<PathBuf> {
    step("VM initramfs (busybox, virtio and 9p modules, /init)");
    let started = Instant::now();
    let busybox = Path::new("/bin/busybox");
    let meta = fs::metadata(busybox).context("/bin/busybox is missing: apt-get install busybox-static")?;
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs());
    let modules: Vec<&str> = kernel.load_order.iter().map(String::as_str).collect();
    let init = init_script(&modules);
    let stamp =
        format!("format {INITRAMFS_FORMAT}\nkernel {}\nbusybox {} bytes, mtime {mtime}\n{init}", kernel.id, meta.len());
    let image = cache.join("initramfs.cpio");
    let stamp_file = cache.join("initramfs.stamp");
    if image.is_file() && fs::read_to_string(&stamp_file).ok().as_deref() == Some(stamp.as_str()) {
        eprintln!("    cached: {}", image.display());
        return Ok(image);
    }
    let pid = std::process::id();
    let staging = cache.join(format!(".initramfs-{pid}"));
    if staging.exists() {
        fs::remove_dir_all(&staging)?;
    }
    let result = (|| -> Result<()> {
        for d in ["bin", "dev", "proc", "sys", "newroot", "lib/modules"] {
            fs::create_dir_all(staging.join(d))?;
        }
        fs::copy(busybox, staging.join("bin/busybox")).context("copying /bin/busybox")?;
        for m in &modules {
            let from = kernel.modules.join(format!("{m}.ko"));
            fs::copy(&from, staging.join(format!("lib/modules/{m}.ko")))
                .with_context(|| format!("copying {}: delete {} and run again", from.display(), cache.display()))?;
        }
        let init_path = staging.join("init");
        fs::write(&init_path, &init)?;
        fs::set_permissions(&init_path, fs::Permissions::from_mode(0o755))?;
        std::os::unix::fs::symlink("busybox", staging.join("bin/sh"))?;

        let mut list = Vec::new();
        list_tree(&staging, Path::new("."), &mut list)?;
        let tmp_image = cache.join(format!(".initramfs-{pid}.cpio"));
        let file = File::create(&tmp_image).with_context(|| format!("creating {}", tmp_image.display()))?;
        let mut cpio = Command::new("cpio")
            .args(["--quiet", "-o", "-H", "newc", "-R", "0:0"])
            .current_dir(&staging)
            .stdin(Stdio::piped())
            .stdout(file)
            .spawn()
            .context("cannot run cpio: apt-get install cpio")?;
        cpio.stdin.take().context("cpio stdin")?.write_all(list.join("\n").as_bytes())?;
        let status = cpio.wait()?;
        if !status.success() {
            bail!("cpio failed with {status} while packing {}", staging.display());
        }
        fs::rename(&tmp_image, &image)?;
        fs::write(&stamp_file, &stamp)?;
        Ok(())
    })();
    let _ = fs::remove_dir_all(&staging);
    result?;
    let size = fs::metadata(&image).map(|m| m.len()).unwrap_or(0);
    eprintln!("    built {} ({} KB) in {}", image.display(), size / 1000, secs(started.elapsed()));
    Ok(image)
}

/// Relative paths of everything under `base/rel`, parents first (cpio order).
fn list_tree(base: &Path, rel: &Path, into: &mut Vec<String>) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(base.join(rel))?.filter_map(|e| e.ok()).collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = rel.join(entry.file_name());
        into.push(path.to_string_lossy().into_owned());
        if entry.file_type()?.is_dir() {
            list_tree(base, &path, into)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// One run
// ---------------------------------------------------------------------------

/// Creates `<cache>/runs/<id>/out/`, deleting all but the newest runs.
fn new_run_dir(cache: &Path) -> Result<PathBuf> {
    let runs = cache.join("runs");
    fs::create_dir_all(&runs).with_context(|| format!("creating {}", runs.display()))?;
    let mut old: Vec<PathBuf> =
        fs::read_dir(&runs)?.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect();
    old.sort();
    if old.len() >= KEEP_RUNS {
        for dir in &old[..=old.len() - KEEP_RUNS] {
            let _ = fs::remove_dir_all(dir);
        }
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).context("system clock before 1970")?;
    let id = format!("{}-{}", utc_timestamp(now.as_secs()), std::process::id());
    let dir = runs.join(id);
    fs::create_dir_all(dir.join("out")).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// `YYYYmmdd-HHMMSS` in UTC (days to civil date after Howard Hinnant).
fn utc_timestamp(unix: u64) -> String {
    let (days, rem) = ((unix / 86_400) as i64, unix % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}{month:02}{day:02}-{:02}{:02}{:02}", rem / 3600, rem / 60 % 60, rem % 60)
}

/// Single-quotes `s` for sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The command as a shell would need it typed, quoting only where needed.
fn shown_command(argv: &[String]) -> String {
    let plain = |a: &String| !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    argv.iter().map(|a| if plain(a) { a.clone() } else { sh_quote(a) }).collect::<Vec<_>>().join(" ")
}

/// Writes `<run_dir>/command.sh`, which the guest runs in the chroot with an
/// empty environment.
fn write_command_script(run_dir: &Path, opts: &VmOptions, cwd: &Path) -> Result<()> {
    let mut env: Vec<(String, String)> = vec![
        ("CG_VM".into(), "1".into()),
        ("CG_VM_OUT".into(), GUEST_OUT.into()),
        ("HOME".into(), "/tmp".into()),
        ("PATH".into(), GUEST_PATH.into()),
    ];
    // HOME is /tmp in the guest, so rustup's proxies must be told where the
    // host's toolchains are.
    if Path::new("/root/.rustup").is_dir() {
        env.push(("RUSTUP_HOME".into(), "/root/.rustup".into()));
    }
    for (k, v) in &opts.env {
        if !is_shell_name(k) {
            bail!("`{k}` is not a valid environment variable name");
        }
        env.retain(|(old, _)| old != k);
        env.push((k.clone(), v.clone()));
    }
    let mut script = String::from("# Generated by cargo xtask vm; run by the guest's /init in the chroot.\n");
    for (k, v) in &env {
        script.push_str(&format!("export {k}={}\n", sh_quote(v)));
    }
    let dir = sh_quote(&cwd.to_string_lossy());
    script.push_str(&format!("cd {dir} || {{ echo \"cargo xtask vm: cannot enter \"{dir} >&2; exit 125; }}\n"));
    let argv: Vec<String> = opts.command.iter().map(|a| sh_quote(a)).collect();
    script.push_str(&format!("exec {}\n", argv.join(" ")));
    let path = run_dir.join("command.sh");
    fs::write(&path, script).with_context(|| format!("writing {}", path.display()))?;
    let path = run_dir.join("stage2.sh");
    fs::write(&path, STAGE2.replace("{share}", GUEST_SHARE)).with_context(|| format!("writing {}", path.display()))
}

/// The guest's PID 1 after `switch_root` (run by the host's static busybox):
/// runs `command.sh` with an empty environment, records its exit code in the
/// run directory and on the console, and powers off.
const STAGE2: &str = r#"# Generated by cargo xtask vm; PID 1 in the guest after switch_root.
/bin/busybox env -i /bin/sh {share}/command.sh </dev/null
code=$?
echo $code > {share}/exit_code
/bin/busybox sync
echo "CG_VM_EXIT=$code"
/bin/busybox poweroff -f
"#;

/// What the console reader saw.
#[derive(Debug, Default)]
struct Console {
    /// When `/init` was about to start the command.
    ready: Option<Instant>,
    kernel: Option<String>,
    lsm: Option<String>,
    exit: Option<i32>,
    errors: Vec<String>,
}

/// Escapes `,` for a QEMU option value.
fn qemu_path(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

/// Boots QEMU, streams the console, enforces the timeout, collects results.
fn boot(opts: &VmOptions, kernel: &Kernel, initramfs: &Path, run_dir: &Path) -> Result<VmOutcome> {
    step(&format!(
        "VM: {} ({} CPUs, {} MiB, TCG), run directory {}",
        shown_command(&opts.command),
        opts.cpus,
        opts.memory_mib,
        run_dir.display()
    ));
    let mut append = vec!["console=ttyS0".to_string(), "panic=-1".into(), "quiet".into()];
    let cwd = check_cwd(&opts.cwd)?;
    let cwd_share = needs_own_share(&cwd);
    if cwd_share {
        // /init mounts the share `cgcwd` back at this path.
        append.push(format!("cg_cwd={}", cwd.display()));
    }
    append.extend(opts.kernel_args.iter().cloned());
    let mut qemu = Command::new("setpriv");
    // If we die (Ctrl-C, kill), the kernel kills QEMU too.
    qemu.args(["--pdeathsig", "KILL", "--", "qemu-system-x86_64"])
        .args(["-accel", "tcg", "-cpu", "max", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
        .args(["-serial", "stdio"])
        .args(if Path::new(QBOOT).is_file() { vec!["-bios", QBOOT] } else { Vec::new() })
        .arg("-m")
        .arg(opts.memory_mib.to_string())
        .arg("-smp")
        .arg(opts.cpus.to_string())
        .arg("-kernel")
        .arg(&kernel.image)
        .arg("-initrd")
        .arg(initramfs)
        .arg("-append")
        .arg(append.join(" "))
        .arg("-virtfs")
        .arg("local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap")
        .arg("-virtfs")
        .arg(format!("local,path={},mount_tag=cgvmout,security_model=none,multidevs=remap", qemu_path(run_dir)))
        .args(if cwd_share {
            vec![
                "-virtfs".to_string(),
                format!("local,path={},mount_tag=cgcwd,security_model=none,readonly=on,multidevs=remap", qemu_path(&cwd)),
            ]
        } else {
            Vec::new()
        })
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let boot_started = Instant::now();
    let mut child = qemu.spawn().context("cannot start qemu-system-x86_64: apt-get install qemu-system-x86")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        let console = read_console(stdout, boot_started);
        let _ = tx.send(());
        console
    });

    let deadline = boot_started + opts.timeout;
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for qemu")? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            break None;
        }
        let _ = rx.recv_timeout(Duration::from_millis(100));
    };
    let Some(status) = status else {
        kill(&mut child);
        let _ = reader.join();
        eprintln!("    killed qemu after {} (timeout)", secs(boot_started.elapsed()));
        return Err(VmTimeout { after: opts.timeout, run_dir: run_dir.to_path_buf() }.into());
    };
    let vm_time = boot_started.elapsed();
    let console = reader.join().unwrap_or_default();

    let read = |name: &str| fs::read_to_string(run_dir.join(name)).ok().map(|s| s.trim().to_string());
    let exit_code = match read("exit_code") {
        Some(code) => code.parse::<i32>().with_context(|| format!("{}/exit_code holds `{code}`", run_dir.display()))?,
        None => match console.exit {
            Some(code) => {
                eprintln!("    warning: the guest wrote no exit_code file; using the console's CG_VM_EXIT={code}");
                code
            }
            None => {
                let why = if console.errors.is_empty() {
                    "no report from the guest's /init (a kernel panic? see the console output above; \
                     more with --kernel-arg loglevel=7)"
                        .to_string()
                } else {
                    format!("the guest's /init failed: {}", console.errors.join("; "))
                };
                bail!("the VM ended ({status}) without the command's exit code: {why}");
            }
        },
    };
    let kernel_release = read("kernel_release").or(console.kernel).unwrap_or_default();
    let lsm = read("lsm").or(console.lsm).unwrap_or_default();
    let boot_time = console.ready.map_or(vm_time, |r| r.duration_since(boot_started));
    Ok(VmOutcome {
        exit_code,
        kernel_release,
        lsm,
        out_dir: run_dir.join("out"),
        run_dir: run_dir.to_path_buf(),
        boot_time,
        vm_time,
    })
}

/// Kills QEMU and reaps it.
fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Streams the console to stdout line by line (dropping the serial line's
/// `\r`), takes `CG_VM_<KEY>=<value>` marker lines out of the stream and
/// reports them on stderr.
fn read_console(stdout: impl std::io::Read, boot_started: Instant) -> Console {
    let mut console = Console::default();
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::new();
    let out = std::io::stdout();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let newline = line.ends_with(b"\n");
        while matches!(line.last(), Some(b'\n' | b'\r')) {
            line.pop();
        }
        // The command's last line may lack its newline, gluing the exit
        // marker to it: pass the command's part through, keep the marker.
        const EXIT_MARKER: &[u8] = b"CG_VM_EXIT=";
        if console.ready.is_some() {
            if let Some(at) = line.windows(EXIT_MARKER.len()).position(|w| w == EXIT_MARKER).filter(|&at| at > 0) {
                let mut out = out.lock();
                let _ = out.write_all(&line[..at]);
                let _ = out.flush();
                line.drain(..at);
            }
        }
        let text = String::from_utf8_lossy(&line);
        if console.exit.is_some() && text.contains("reboot: Power down") {
            continue;
        }
        if let Some((key, value)) = text.strip_prefix("CG_VM_").and_then(|m| m.split_once('=')) {
            let value = value.trim().to_string();
            match key {
                "KERNEL" => {
                    eprintln!("    guest kernel: {value}");
                    console.kernel = Some(value);
                    continue;
                }
                "LSM" => {
                    eprintln!("    guest LSMs: {value}");
                    console.lsm = Some(value);
                    continue;
                }
                "READY" => {
                    eprintln!("    booted in {}; running the command", secs(boot_started.elapsed()));
                    console.ready = Some(Instant::now());
                    continue;
                }
                "EXIT" if console.ready.is_some() => {
                    console.exit = value.parse().ok();
                    continue;
                }
                "ERROR" => {
                    eprintln!("    guest /init failed: {value}");
                    console.errors.push(value);
                    continue;
                }
                _ => {}
            }
        }
        let mut out = out.lock();
        let _ = out.write_all(&line);
        if newline {
            let _ = out.write_all(b"\n");
        }
        let _ = out.flush();
    }
    console
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_civil_dates() {
        assert_eq!(utc_timestamp(0), "19700101-000000");
        assert_eq!(utc_timestamp(951_782_400), "20000229-000000");
        assert_eq!(utc_timestamp(1_798_761_599), "20261231-235959");
    }

    #[test]
    fn quoting_and_env_names() {
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert!(parse_env("A_1=x=y").is_ok_and(|(k, v)| k == "A_1" && v == "x=y"));
        assert!(parse_env("1A=x").is_err());
        assert!(parse_env("novalue").is_err());
    }

    #[test]
    fn modules_load_after_their_dependencies() -> Result<()> {
        let m = |name: &str, deps: &[&str]| (name.to_string(), deps.iter().map(|d| d.to_string()).collect());
        let list = [m("virtio", &["virtio_ring"]), m("virtio_ring", &[]), m("9p", &["virtio", "crc"])];
        assert_eq!(load_order(&list, |d| d == "crc")?, ["virtio_ring", "virtio", "9p"]);
        assert!(load_order(&list, |_| false).is_err());
        assert_eq!(modinfo_depends(b"x\0license=GPL\0depends=a,b\0vermagic=6"), ["a", "b"]);
        assert!(modinfo_depends(b"\0depends=\0").is_empty());
        Ok(())
    }

    #[test]
    fn module_names() {
        assert_eq!(module_name(Path::new("a/9pnet_virtio.ko.xz")).as_deref(), Some("9pnet_virtio"));
        assert_eq!(module_name(Path::new("kernel/fs/9p/9p.ko")).as_deref(), Some("9p"));
        assert_eq!(module_name(Path::new("modules.dep")), None);
    }
}
