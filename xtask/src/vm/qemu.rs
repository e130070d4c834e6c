//! Booting the VM and collecting the result: the QEMU command line (the
//! machine of the guest's architecture, TCG, the kernel and initramfs, 9p
//! shares of the guest's root, the run directory and, when the guest would
//! hide it, the working directory), QEMU's lifetime (dies with us, killed
//! at the timeout), the serial console streamed to our stdout (or a log
//! file) with the `CG_VM_<KEY>=<value>` markers taken out, and the
//! [`VmOutcome`] read from the run directory.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use xtask::{secs, step};

use super::{kernel::Kernel, run_dir::shown_command, VmOptions, VmOutcome, VmTimeout};
use crate::arch::Arch;

/// qboot, a minimal firmware shipped with QEMU (qemu-system-data): it boots
/// faster than SeaBIOS and prints nothing on the serial console.
const QBOOT: &str = "/usr/share/qemu/qboot.rom";

/// Directories the guest replaces with its own file systems. A working
/// directory under `/tmp` or `/run` (a clone in /tmp, say) is shared with
/// the guest separately and mounted back at the same path.
const REPLACED: [&str; 5] = ["/tmp", "/run", "/proc", "/sys", "/dev"];

/// Makes `cwd` absolute and checks it exists and can be made visible in the
/// guest.
pub(super) fn check_cwd(cwd: &Path) -> Result<PathBuf> {
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

/// What the console reader saw.
#[derive(Debug, Default)]
struct Console {
    /// When `/init` was about to start the command.
    ready: Option<Instant>,
    kernel: Option<String>,
    lsm: Option<String>,
    exit: Option<i32>,
    errors: Vec<String>,
    /// The guest kernel's first `Kernel panic - not syncing:` line.
    panic: Option<String>,
}

/// Escapes `,` for a QEMU option value.
fn qemu_path(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

/// Boots QEMU, streams the console, enforces the timeout, collects results.
/// The QEMU system emulator of an architecture, its machine arguments and
/// the kernel's console device.
pub(super) struct Machine {
    pub(super) qemu: &'static str,
    /// The Debian package that ships it.
    pub(super) package: &'static str,
    args: &'static [&'static str],
    console: &'static str,
}

/// x86-64: QEMU's default PC (with qboot when installed, which starts the
/// kernel faster than SeaBIOS), `-cpu max`, and single-threaded TCG: under
/// multi-threaded TCG a vCPU has looped on an `int3` that `text_poke_bp` on
/// the other vCPU had already replaced (a stale translated block; the
/// syscall tracepoints' static branch flips whenever the first `sys_enter`
/// user attaches or the last detaches), twice in clean-clone CI runs. With
/// all vCPUs in one host thread a code write and the other vCPU's next
/// block cannot race; the CLI's commands took the same time either way
/// (26.4 s against 25.6 s), as they barely use the second vCPU.
/// arm64: the `virt` board, whose PL011 UART is the console, with a Neoverse N1 (Armv8.2: Graviton2, Ampere
/// Altra). Not arm64's `-cpu max`: its pointer authentication is emulated
/// with the architected QARMA5 cipher at every signed return of Debian's
/// kernel, which made the guest about 2.2 times slower (doctor 25 s against
/// 11 s, boot 7.8 s against 2.3 s), and under it the suite's Node.js died
/// once of SIGILL in a run whose tests had all passed.
pub(super) fn machine(arch: &Arch) -> Machine {
    match arch.target_arch {
        "aarch64" => Machine {
            qemu: "qemu-system-aarch64",
            package: "qemu-system-arm",
            args: &["-M", "virt", "-accel", "tcg", "-cpu", "neoverse-n1"],
            console: "ttyAMA0",
        },
        _ => Machine {
            qemu: "qemu-system-x86_64",
            package: "qemu-system-x86",
            args: &["-accel", "tcg,thread=single", "-cpu", "max"],
            console: "ttyS0",
        },
    }
}

/// Boots `kernel` with `initramfs`, the guest's root shared from `root` (the
/// host's `/`, or another architecture's userland), and waits for the
/// command to end.
pub(super) fn boot(opts: &VmOptions, kernel: &Kernel, initramfs: &Path, run_dir: &Path, root: &Path) -> Result<VmOutcome> {
    let machine = machine(opts.kernel.arch);
    let out = Out::new(opts.log.as_deref())?;
    out.step(&format!(
        "VM: {} ({} CPUs, {} MiB, TCG), run directory {}",
        shown_command(&opts.command),
        opts.cpus,
        opts.memory_mib,
        run_dir.display()
    ));
    // A CPU stuck in the kernel for a minute (twice watchdog_thresh; under
    // TCG beside another VM a vCPU can wait seconds for the host) panics
    // the guest, which ends the boot (-no-reboot), after printing every
    // CPU's stack: a run that hangs otherwise waits out CI's limit and
    // shows nothing.
    // loglevel=5 lets those stacks (KERN_DEFAULT) reach the console, which
    // `quiet` (4) would keep in the guest's log buffer only.
    let mut append = vec![
        format!("console={}", machine.console),
        "panic=-1".into(),
        "loglevel=5".into(),
        "watchdog_thresh=30".into(),
        "softlockup_panic=1".into(),
        "softlockup_all_cpu_backtrace=1".into(),
        // A CPU that is not locked up but never reaches a quiescent state
        // (looping through an exception) stalls RCU instead: that panics
        // too, at the first stall report (21 s in Debian's kernels).
        "sysctl.kernel.panic_on_rcu_stall=1".into(),
    ];
    let cwd = check_cwd(&opts.cwd)?;
    // Another architecture's root does not hold the working directory.
    let cwd_share = needs_own_share(&cwd) || root != Path::new("/");
    if cwd_share {
        // /init mounts the share `cgcwd` back at this path.
        append.push(format!("cg_cwd={}", cwd.display()));
    }
    append.extend(opts.kernel.boot_args.iter().map(|a| a.to_string()));
    append.extend(opts.kernel_args.iter().cloned());
    let mut qemu = Command::new("setpriv");
    // If we die (Ctrl-C, kill), the kernel kills QEMU too.
    qemu.args(["--pdeathsig", "KILL", "--", machine.qemu])
        .args(machine.args)
        .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
        .args(["-serial", "stdio"])
        .args(if machine.qemu == "qemu-system-x86_64" && Path::new(QBOOT).is_file() { vec!["-bios", QBOOT] } else { Vec::new() })
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
        .arg(format!("local,path={},mount_tag=host,security_model=none,readonly=on,multidevs=remap", qemu_path(root)))
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
        .stderr(out.stderr()?);
    let boot_started = Instant::now();
    let mut child =
        qemu.spawn().with_context(|| format!("cannot start {}: apt-get install {}", machine.qemu, machine.package))?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let (tx, rx) = mpsc::channel();
    let reader_out = out.clone();
    let reader = thread::spawn(move || {
        let console = read_console(stdout, boot_started, &reader_out);
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
        out.msg(&format!("    killed qemu after {} (timeout)", secs(boot_started.elapsed())));
        return Err(VmTimeout { after: opts.timeout, run_dir: run_dir.to_path_buf() }.into());
    };
    let vm_time = boot_started.elapsed();
    let console = reader.join().unwrap_or_default();

    let read = |name: &str| fs::read_to_string(run_dir.join(name)).ok().map(|s| s.trim().to_string());
    let exit_code = match read("exit_code") {
        Some(code) => code.parse::<i32>().with_context(|| format!("{}/exit_code holds `{code}`", run_dir.display()))?,
        None => match console.exit {
            Some(code) => {
                out.msg(&format!("    warning: the guest wrote no exit_code file; using the console's CG_VM_EXIT={code}"));
                code
            }
            None => {
                let why = if let Some(panic) = &console.panic {
                    format!("the guest kernel panicked ({panic}); its stacks are in the console output above")
                } else if console.errors.is_empty() {
                    "no report from the guest's /init (a kernel panic? see the console output; \
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
fn read_console(stdout: impl std::io::Read, boot_started: Instant, out: &Out) -> Console {
    let mut console = Console::default();
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::new();
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
                out.console(&line[..at]);
                line.drain(..at);
            }
        }
        let text = String::from_utf8_lossy(&line);
        if console.panic.is_none() {
            if let Some((_, why)) = text.split_once("Kernel panic - not syncing: ") {
                console.panic = Some(why.trim().to_string());
            }
        }
        if console.exit.is_some() && text.contains("reboot: Power down") {
            continue;
        }
        if let Some((key, value)) = text.strip_prefix("CG_VM_").and_then(|m| m.split_once('=')) {
            let value = value.trim().to_string();
            match key {
                "KERNEL" => {
                    out.msg(&format!("    guest kernel: {value}"));
                    console.kernel = Some(value);
                    continue;
                }
                "LSM" => {
                    out.msg(&format!("    guest LSMs: {value}"));
                    console.lsm = Some(value);
                    continue;
                }
                "READY" => {
                    out.msg(&format!("    booted in {}; running the command", secs(boot_started.elapsed())));
                    console.ready = Some(Instant::now());
                    continue;
                }
                "EXIT" if console.ready.is_some() => {
                    console.exit = value.parse().ok();
                    continue;
                }
                "ERROR" => {
                    out.msg(&format!("    guest /init failed: {value}"));
                    console.errors.push(value);
                    continue;
                }
                _ => {}
            }
        }
        if newline {
            line.push(b'\n');
        }
        out.console(&line);
    }
    console
}

/// Where one VM's console output and the harness's messages about it go:
/// stdout and stderr, or one log file ([`VmOptions::log`]) for VMs that run
/// side by side.
#[derive(Clone)]
struct Out(Option<Arc<Mutex<fs::File>>>);

impl Out {
    fn new(log: Option<&Path>) -> Result<Out> {
        Ok(Out(match log {
            Some(path) => {
                fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
                // Appending: QEMU's own stderr writes into the same file.
                let file = fs::OpenOptions::new().append(true).open(path).with_context(|| format!("opening {}", path.display()))?;
                Some(Arc::new(Mutex::new(file)))
            }
            None => None,
        }))
    }

    /// QEMU's stderr: ours, or the log.
    fn stderr(&self) -> Result<Stdio> {
        Ok(match &self.0 {
            None => Stdio::inherit(),
            Some(file) => Stdio::from(file.lock().unwrap_or_else(|e| e.into_inner()).try_clone().context("the log file")?),
        })
    }

    /// A step header, as [`step`] prints it.
    fn step(&self, what: &str) {
        match &self.0 {
            None => step(what),
            Some(_) => self.msg(&format!("==> {what}")),
        }
    }

    /// One line of the harness's.
    fn msg(&self, line: &str) {
        match &self.0 {
            None => eprintln!("{line}"),
            Some(file) => {
                let _ = writeln!(file.lock().unwrap_or_else(|e| e.into_inner()), "{line}");
            }
        }
    }

    /// Bytes of the guest's console.
    fn console(&self, bytes: &[u8]) {
        match &self.0 {
            None => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(bytes);
                let _ = out.flush();
            }
            Some(file) => {
                let _ = file.lock().unwrap_or_else(|e| e.into_inner()).write_all(bytes);
            }
        }
    }
}
