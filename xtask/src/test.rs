//! `cargo xtask test`: every suite, on the host and in the VM.
//!
//! - Rust: the event layout against the object's BTF, the loader against
//!   the host kernel.
//! - vitest on the host kernel (tracepoint only, see docs/platform.md).
//! - vitest in Debian's 6.1 kernel under QEMU, in one boot: every file but
//!   [`HOST_ONLY_FILES`] in `auto` (must pick fentry), then the guard's
//!   attack suite ([`FULL_PREEMPTION_FILES`]) in `auto` after the kernel
//!   is switched to full preemption, where every program can be preempted
//!   mid-call; in a second, the mode-dependent files ([`PER_MODE_FILES`])
//!   in forced `kprobe` and forced `tracepoint`. The same test files and
//!   assertions as on the host.
//! - The other Debian kernels of [`vm::DEFAULT_RUN`] (5.10, 6.12, arm64's
//!   6.1), in `auto` and the modes their [`vm::KernelSpec::forced_modes`]
//!   name (none yet), on the files their
//!   [`vm::KernelSpec::files`] names. `--vm-kernel V` runs the kernels
//!   named instead.
//! - Two lanes side by side ([`run_lanes`]): the first boot starts once
//!   the machine's own build is done, while the other lane cross-builds,
//!   packs and runs the host's tests, then takes the next boot;
//!   `--vm-serial` runs the host's work, then every suite of a kernel in
//!   one boot, one kernel after another.
//!
//! Results come back as vitest JSON reports (host: `target/test-results/`,
//! VM: the run directory's `out/`), and a summary names each place, its
//! kernel and its counts.

use std::{fs, path::Path, time::Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use xtask::{in_root, npx, output, root, run, step};

use crate::{arch::Arch, vm};

/// What `cargo xtask test` runs.
#[derive(Args, Debug, Default)]
pub struct TestArgs {
    /// Skip the VM suites (host only).
    #[arg(long, conflicts_with = "vm_only")]
    pub host_only: bool,
    /// Skip the host suites (VM only).
    #[arg(long)]
    pub vm_only: bool,
    /// VM modes to run (default: auto and each kernel's forced modes:
    /// kprobe and tracepoint on 6.1).
    #[arg(long = "vm-mode", value_parser = ["auto", "kprobe", "tracepoint", "fentry"])]
    pub vm_modes: Vec<String>,
    /// VM kernels to run the suites on (repeatable): 5.10, 6.1, 6.12 or
    /// 6.1/arm64 (default: 6.1, then 5.10, 6.12 and 6.1/arm64). See `cargo
    /// xtask vm --help`.
    #[arg(long = "vm-kernel", value_name = "VERSION", value_parser = vm::parse_kernel)]
    pub vm_kernels: Vec<vm::KernelSpec>,
    /// Run the host's tests, then boot the VMs one after another, their
    /// output live, instead of in two lanes side by side.
    #[arg(long)]
    pub vm_serial: bool,
    /// Only these vitest files (e.g. test/watch.test.ts).
    pub files: Vec<String>,
}

/// Test files whose behaviour depends on the attach mode: run in every VM
/// mode. The rest (lifecycle, doctor and stacks, policy parsing, the guard
/// and its attacks, whose programs do not depend on the watch mode) run
/// once, in `auto`.
/// Host-only files (see test/QUARANTINE.md): the packed-tarball install
/// needs the npm registry, and the guest has no network; the policy tests
/// (parsing, limits, `check`, `evaluatePolicy`) and the record writers'
/// tests reach no kernel, so the VM would only run them again, slower
/// (about 3 minutes and 35 s under TCG). The kernel's side of the policy is
/// the differential test's, and real records' the watch and CLI tests',
/// which run in the VM. The agent's kernel side is the watch session every
/// VM mode tests; what is its own (config, output rotation, metrics read
/// back by a real Prometheus, which the guest does not have) depends on no
/// kernel. `replay` and `learn` read recordings: the synthetic one (1 GB)
/// reaches no kernel, and the real ones are `watch --json`, which the CLI
/// tests check in every VM mode. The deploy examples' checks need the
/// registry too (the Containerfile's install) and tools the guest lacks.
const HOST_ONLY_FILES: &[&str] = &[
    "test/package.test.ts",
    "test/policy.test.ts",
    "test/records.test.ts",
    "test/agent.test.ts",
    "test/replay.test.ts",
    "test/replay-synthetic.test.ts",
    "test/deploy.test.ts",
];
const PER_MODE_FILES: &[&str] =
    &["test/watch.test.ts", "test/attach.test.ts", "test/loss.test.ts", "test/cli.test.ts", "test/escapes.test.ts"];

/// Files run with the kernel fully preemptible (`sched/preempt` in debugfs
/// set to `full`, as distributions booting `preempt=full` or built
/// `CONFIG_PREEMPT` run), not with Debian's default `voluntary`: the guard's
/// attacks, whose threads then preempt each other inside the LSM program,
/// and `auto`'s choice there: not fentry, whose programs the kernel skips
/// when entered on a CPU where they already run (a per-CPU recursion
/// guard), which a preempted program makes common (docs/platform.md).
const FULL_PREEMPTION_FILES: &[&str] = &["test/escape.test.ts", "test/preemption.test.ts"];

/// The guest's dynamic preemption switch (Debian builds `PREEMPT_DYNAMIC`).
const PREEMPT: &str = "/sys/kernel/debug/sched/preempt";

/// One vitest run in the VM.
struct Suite {
    /// Names the run's report (`results-<label>.json`) and exit code.
    label: String,
    /// `CG_TEST_MODE`.
    mode: String,
    files: Vec<String>,
    /// Run with full preemption ([`FULL_PREEMPTION_FILES`]).
    full_preemption: bool,
}

/// How long one boot may run before it is killed. Under TCG on 2 CPUs,
/// beside a second VM, the `auto` suite on 6.1 takes 30 to 40 minutes (each
/// LSM program load verifies for seconds); another job sharing the CPUs
/// slows all of it by up to half.
const VM_SUITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// One suite's outcome.
struct Outcome {
    place: String,
    kernel: String,
    mode: String,
    passed: u64,
    failed: u64,
    skipped: u64,
    secs: f64,
    failures: Vec<String>,
}

/// What a vitest JSON report holds.
#[derive(Default)]
struct Report {
    passed: u64,
    failed: u64,
    skipped: u64,
    /// From the run's start to its last file's end.
    secs: f64,
    /// Each failed test (or file that failed to run) as `file › test:
    /// first line of its error`, so that the summary, the end of the
    /// output that CI keeps, names what failed.
    failures: Vec<String>,
}

/// Reads a vitest JSON report.
fn read_report(path: &Path) -> Result<Report> {
    let text = fs::read_to_string(path).with_context(|| format!("no test report at {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let n = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
    let ms = |v: &serde_json::Value, k: &str| v.get(k).and_then(serde_json::Value::as_f64).unwrap_or(0.0);
    let s = |v: &serde_json::Value, k: &str| v.get(k).and_then(serde_json::Value::as_str).unwrap_or("").to_string();
    let first_line = |m: &str| m.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("").chars().take(300).collect::<String>();
    let files = v.get("testResults").and_then(serde_json::Value::as_array).cloned().unwrap_or_default();
    let end = files.iter().map(|f| ms(f, "endTime")).fold(0.0, f64::max);
    let mut failures = Vec::new();
    for f in &files {
        let name = s(f, "name");
        let file = name.rsplit_once("/test/").map_or(name.as_str(), |(_, f)| f).to_string();
        let tests = f.get("assertionResults").and_then(serde_json::Value::as_array).cloned().unwrap_or_default();
        let mut any = false;
        for t in tests.iter().filter(|t| s(t, "status") == "failed") {
            any = true;
            let msg = t.get("failureMessages").and_then(|m| m.get(0)).and_then(serde_json::Value::as_str).unwrap_or("");
            failures.push(format!("{file} › {}: {}", s(t, "fullName"), first_line(msg)));
        }
        if !any && s(f, "status") == "failed" {
            failures.push(format!("{file}: {}", first_line(&s(f, "message"))));
        }
    }
    Ok(Report {
        passed: n("numPassedTests"),
        failed: n("numFailedTests"),
        skipped: n("numPendingTests") + n("numTodoTests"),
        secs: ((end - ms(&v, "startTime")) / 1000.0).max(0.0),
        failures,
    })
}

/// The guest's script: each mode's vitest run in turn, in one boot (a boot
/// and vitest's first transform cost about a minute each under TCG). Each
/// run leaves `results-<label>.json` and its exit code in `rc-<label>` in
/// `CG_VM_OUT`; the script fails if any run failed.
/// `slowdown` scales vitest's timeouts (see [`Boot::slowdown`]) and goes to
/// the tests as `CG_TEST_SLOWDOWN` for the timeouts of their own.
fn vm_script(suites: &[Suite], slowdown: u32) -> String {
    let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    // vitest prints a file only when it ends: every HEARTBEAT the guest's
    // processes (not kernel threads) go to the console, so a run that stops
    // progressing shows what it is waiting on (procps's ps in the x86-64
    // guest, busybox's, without times, in the arm64 one).
    let mut script = format!("rc=0\n{HEARTBEAT_FN}( while sleep {}; do heartbeat; done ) &\nheartbeat=$!\n", HEARTBEAT.as_secs());
    for Suite { label, mode, files, full_preemption } in suites {
        let report = format!("{}/results-{label}.json", vm::GUEST_OUT);
        let mut command = vec!["npx".to_string(), "--no-install".into()];
        command.extend(vitest_args(&report, files));
        if slowdown > 1 {
            // vitest.config.ts's 60 s, scaled to the guest's speed.
            let ms = 60_000 * slowdown;
            command.extend([format!("--testTimeout={ms}"), format!("--hookTimeout={ms}")]);
        }
        // One worker for every file: each new one costs about 15 s of
        // imports under TCG. The files already run one at a time, and each
        // stops what it loads (the host suite keeps isolation).
        command.push("--no-isolate".into());
        let command: Vec<String> = command.iter().map(|a| quote(a)).collect();
        let preempt = if *full_preemption { "full" } else { "voluntary" };
        // Kernels before 5.12 have no switch (no PREEMPT_DYNAMIC): Debian
        // builds them voluntary, which `uname -v` shows by naming no PREEMPT.
        let switch = if *full_preemption {
            format!("echo {preempt} > {PREEMPT}")
        } else {
            format!("if [ -e {PREEMPT} ]; then echo {preempt} > {PREEMPT}; else ! uname -v | grep -q PREEMPT; fi")
        };
        script.push_str(&format!(
            "echo; echo '==> VM suite: {label} (mode {mode}, preemption {preempt})'\n\
             [ -e {PREEMPT} ] || mount -t debugfs debugfs /sys/kernel/debug\n\
             if {switch}; then CG_TEST_MODE={mode} CG_TEST_SLOWDOWN={slowdown} {}; s=$?; else echo 'cannot set {PREEMPT}'; s=1; fi\n\
             echo $s > {}/rc-{label}; [ $s = 0 ] || rc=1\n",
            command.join(" "),
            vm::GUEST_OUT
        ));
    }
    script.push_str("kill $heartbeat 2>/dev/null\nexit $rc\n");
    script
}

/// How often a VM boot prints the guest's processes (see [`vm_script`]).
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(300);

/// The guest's `heartbeat` shell function: its processes, its free memory,
/// and for each Node.js process its memory and every thread's name, state,
/// CPU ticks (user, system), wait channel and the top of its kernel stack:
/// enough to tell a test waiting on a process from a worker collecting
/// garbage, spinning in the kernel or blocked on a lock.
const HEARTBEAT_FN: &str = r#"heartbeat() {
  echo "==> VM heartbeat $(date +%T): processes"
  { ps -eo pid,ppid,etime,time,args 2>/dev/null || ps -o pid,ppid,stat,args; } | grep -v ']$' | cut -c1-200
  echo "memory: $(grep -E '^(MemTotal|MemAvailable)' /proc/meminfo | tr -s ' ' | tr '
' ' ')"
  for p in $(ps -eo pid,comm 2>/dev/null | awk '$2 == "node" { print $1 }'); do
    echo "node $p: $(grep -E '^(VmRSS|VmHWM|Threads)' /proc/$p/status | tr -s ' 	' ' ' | tr '
' ' ')"
    for t in /proc/$p/task/*; do
      echo "  ${t##*/} $(cat $t/comm) $(sed 's/.*) //' $t/stat | awk '{ print $1, "utime", $12, "stime", $13 }') wchan $(cat $t/wchan 2>/dev/null)"
      head -3 $t/stack 2>/dev/null | sed 's/^/      /'
    done
  done
}
"#;

/// Runs vitest on the host on `files` (all when empty) with `env`, its
/// report in `<results>/<name>.json`, and counts what it says.
fn host_suite(results: &Path, name: &str, files: &[String], env: &[(&str, &str)], kernel: &str, mode: String) -> Result<Outcome> {
    let report = results.join(format!("{name}.json"));
    let _ = fs::remove_file(&report);
    let t = Instant::now();
    let status = npx(&[]).args(vitest_args(&report.to_string_lossy(), files)).envs(env.iter().copied()).status()?;
    let r = read_report(&report)?;
    Ok(Outcome {
        place: "host".into(),
        kernel: kernel.to_string(),
        mode,
        passed: r.passed,
        failed: if status.success() { r.failed } else { r.failed.max(1) },
        skipped: r.skipped,
        secs: t.elapsed().as_secs_f64(),
        failures: r.failures,
    })
}

fn vitest_args(report: &str, files: &[String]) -> Vec<String> {
    let mut args: Vec<String> = ["vitest", "run", "--configLoader", "runner", "--reporter=default", "--reporter=json"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(format!("--outputFile.json={report}"));
    args.extend(files.iter().cloned());
    args
}

/// The files the host runs a second time with the legacy eBPF object
/// forced (`CHROOT_GUARD_OBJECT=legacy`): what reaches its programs (the
/// watch path, escapes seen by watch, `ps`, loss accounting). Its kernels
/// (5.10 in the VM) run it in `auto`; the host covers the same programs on
/// a newer kernel, and so checks that both objects report alike.
const LEGACY_HOST_FILES: &[&str] =
    &["test/watch.test.ts", "test/escapes.test.ts", "test/ps.test.ts", "test/loss.test.ts"];

/// Runs every suite and prints the summary; fails if any test failed.
pub fn test(args: &TestArgs) -> Result<()> {
    let started = Instant::now();
    let results = root().join("target/test-results");
    fs::create_dir_all(&results)?;
    let kernels: Vec<vm::KernelSpec> = match (args.host_only, args.vm_kernels.is_empty()) {
        (true, _) => Vec::new(),
        (false, true) => vm::DEFAULT_RUN.iter().map(|n| vm::kernel_spec(n)).collect::<Result<_>>()?,
        (false, false) => args.vm_kernels.clone(),
    };
    let side_by_side = !args.vm_serial;
    let mut boots = Vec::new();
    for kernel in &kernels {
        boots.extend(vm_boots(args, kernel, side_by_side)?);
    }
    // The host suite installs every platform package (test/package.test.ts);
    // without it, the VMs need their own architectures' addons only.
    let mut cross: Vec<&'static Arch> = if args.vm_only { Vec::new() } else { crate::arch::all() };
    for b in &boots {
        if !cross.iter().any(|a| a.name == b.kernel.arch.name) {
            cross.push(b.kernel.arch);
        }
    }
    let host = HostWork { args, cross, results: &results };
    let (outcomes, problems) = run_lanes(&host, &boots, side_by_side, &results)?;
    step("Summary");
    let w = outcomes.iter().map(|o| o.mode.chars().count()).max().unwrap_or(0).max(26);
    eprintln!("  {:<5} {:<24} {:<w$} {:>6} {:>6} {:>7} {:>7}", "where", "kernel", "mode", "passed", "failed", "skipped", "time");
    for o in &outcomes {
        eprintln!(
            "  {:<5} {:<24} {:<w$} {:>6} {:>6} {:>7} {:>6.0}s",
            o.place, o.kernel, o.mode, o.passed, o.failed, o.skipped, o.secs
        );
    }
    for k in &kernels {
        if let vm::Files::Only(only, why) = k.files {
            eprintln!("  {}: {} only: {why}", k.label(), only.join(", "));
        }
    }
    for o in &outcomes {
        for f in &o.failures {
            eprintln!("  failed ({} {}, {}): {f}", o.place, o.kernel, o.mode);
        }
    }
    for p in &problems {
        eprintln!("  VM: {p}");
    }
    eprintln!("  total time {:.0}s", started.elapsed().as_secs_f64());
    let failed: u64 = outcomes.iter().map(|o| o.failed).sum();
    if failed > 0 {
        bail!("{failed} test(s) failed");
    }
    Ok(())
}

/// What runs on the host: the other architectures' addons, then (unless
/// `--vm-only`) the packages, the Rust tests and vitest on the host kernel.
struct HostWork<'a> {
    args: &'a TestArgs,
    /// Architectures whose addon is cross-built ([`crate::build::build_cross`]).
    cross: Vec<&'static Arch>,
    results: &'a Path,
}

impl HostWork<'_> {
    /// Whether anything but cross-building is left to do.
    fn runs_suites(&self) -> bool {
        !self.args.vm_only
    }

    /// Builds, packs and runs the host's suites; their outcomes.
    fn run(&self) -> Result<Vec<Outcome>> {
        crate::build::build_cross(&self.cross)?;
        let mut outcomes = Vec::new();
        if !self.runs_suites() {
            return Ok(outcomes);
        }
        let (args, results) = (self.args, self.results);
        crate::pack::pack()?;
        step("Rust tests (event layout vs. the object's BTF; the loader against the host kernel)");
        run(in_root("cargo").args(["test", "--workspace", "--no-default-features"]))?;
        step("TypeScript tests against the host kernel (vitest)");
        // What the host kernel allows (Linux 6.18 under lockdown `integrity`,
        // no CONFIG_KPROBES: docs/platform.md): only the tracepoint family.
        // Set CG_EXPECT_AUTO_MODE on another kernel.
        let expect = std::env::var("CG_EXPECT_AUTO_MODE").unwrap_or_else(|_| "tracepoint".into());
        let kernel = output(std::process::Command::new("uname").arg("-r"))?.trim().to_string();
        outcomes.push(host_suite(results, "host", &args.files, &[("CG_EXPECT_AUTO_MODE", &expect)], &kernel, format!("auto→{expect}"))?);
        let legacy: Vec<String> = if args.files.is_empty() {
            LEGACY_HOST_FILES.iter().map(|f| f.to_string()).collect()
        } else {
            args.files.iter().filter(|f| LEGACY_HOST_FILES.iter().any(|l| f.ends_with(l))).cloned().collect()
        };
        if !legacy.is_empty() {
            step("TypeScript tests against the host kernel with the legacy eBPF object (CHROOT_GUARD_OBJECT=legacy)");
            let env = [("CG_EXPECT_AUTO_MODE", expect.as_str()), ("CHROOT_GUARD_OBJECT", "legacy")];
            outcomes.push(host_suite(results, "host-legacy", &legacy, &env, &kernel, format!("auto→{expect}, legacy object"))?);
        }
        Ok(outcomes)
    }
}

/// One boot of a VM kernel and the suites it runs.
struct Boot {
    kernel: vm::KernelSpec,
    modes: Vec<String>,
    suites: Vec<Suite>,
    /// How much slower than a lone x86-64 VM its tests run: the kernel's
    /// [`vm::KernelSpec::slowdown`], doubled when it shares the CPUs with a
    /// second VM (tests that took 20 s alone took 60 to 70 s so). vitest's
    /// timeouts, which are there to end a hang, are scaled by it.
    slowdown: u32,
}

/// The boots of one VM kernel: the modes asked for, or `auto` and the
/// kernel's [`vm::KernelSpec::forced_modes`]; the files named, or the
/// kernel's (in a forced mode, those of them that depend on the mode). One boot, or with `split` two: `auto`'s suites
/// (the longest), and the forced modes'.
fn vm_boots(args: &TestArgs, kernel: &vm::KernelSpec, split: bool) -> Result<Vec<Boot>> {
    let modes: Vec<String> = if !args.vm_modes.is_empty() {
        args.vm_modes.clone()
    } else {
        std::iter::once("auto").chain(kernel.forced_modes.iter().copied()).map(String::from).collect()
    };
    let mut suites = Vec::new();
    for mode in &modes {
        let files: Vec<String> = if let vm::Files::Only(only, _) = kernel.files {
            // Named files run there only if they can; a forced mode, its files only.
            only.iter()
                .filter(|f| mode == "auto" || PER_MODE_FILES.contains(f))
                .map(|s| s.to_string())
                .filter(|f| args.files.is_empty() || args.files.iter().any(|a| f.contains(a.as_str())))
                .collect()
        } else if !args.files.is_empty() {
            // vitest takes names as filters; the host-only files have no place here.
            args.files.iter().filter(|a| !HOST_ONLY_FILES.iter().any(|h| h == a || h.ends_with(&format!("/{a}")))).cloned().collect()
        } else if mode == "auto" {
            let mut all: Vec<String> = fs::read_dir(root().join("test"))?
                .filter_map(|e| e.ok().map(|e| format!("test/{}", e.file_name().to_string_lossy())))
                .filter(|f| f.ends_with(".test.ts") && !HOST_ONLY_FILES.contains(&f.as_str()))
                .collect();
            all.sort();
            all
        } else {
            PER_MODE_FILES.iter().map(|s| s.to_string()).collect()
        };
        // In `auto`, the attack suite runs apart, fully preemptible.
        let (full, voluntary): (Vec<String>, Vec<String>) =
            files.into_iter().partition(|f| mode == "auto" && FULL_PREEMPTION_FILES.contains(&f.as_str()));
        if !voluntary.is_empty() {
            suites.push(Suite { label: mode.clone(), mode: mode.clone(), files: voluntary, full_preemption: false });
        }
        if !full.is_empty() {
            suites.push(Suite { label: format!("{mode}-preempt-full"), mode: mode.clone(), files: full, full_preemption: true });
        }
    }
    if suites.is_empty() {
        if let vm::Files::Only(only, why) = kernel.files {
            eprintln!("  not booting {}: none of the files named runs there ({} only: {why})", kernel.label(), only.join(", "));
        }
        return Ok(Vec::new());
    }
    let boot = |suites: Vec<Suite>| {
        let mut modes: Vec<String> = Vec::new();
        for s in &suites {
            let m = if s.full_preemption { format!("{}, preempt full", s.mode) } else { s.mode.clone() };
            if !modes.contains(&m) {
                modes.push(m);
            }
        }
        Boot { kernel: *kernel, modes, suites, slowdown: kernel.slowdown * if split { 2 } else { 1 } }
    };
    // `auto`'s suites (voluntary, then fully preemptible) make the longest
    // boot; the forced modes, a second one that shares a lane with the
    // other kernels.
    let (auto, forced): (Vec<Suite>, Vec<Suite>) = suites.into_iter().partition(|s| s.mode == "auto");
    Ok(if split && !auto.is_empty() && !forced.is_empty() {
        vec![boot(auto), boot(forced)]
    } else {
        vec![boot(auto.into_iter().chain(forced).collect())]
    })
}

/// A lane's job: the host's work ([`HostWork`]), or one boot.
#[derive(Clone, Copy)]
enum Job {
    Host,
    Boot(usize),
}

/// What the lanes share: the kernels and the tests' C programs made ready,
/// and how the host's work ended.
#[derive(Default)]
struct Ready {
    prepared: Vec<std::sync::Arc<vm::Prepared>>,
    /// The tests' C programs of each architecture but the machine's ([`test_programs`]).
    programs: Vec<(&'static str, std::path::PathBuf)>,
    /// Set when the host's work has ended: its error, if it failed.
    host_done: Option<std::result::Result<(), String>>,
}

impl Ready {
    /// What `boot` needs, if it is ready.
    fn for_boot(&self, boot: &Boot) -> Option<(std::sync::Arc<vm::Prepared>, Option<std::path::PathBuf>)> {
        let prepared = self.prepared.iter().find(|p| p.spec() == &boot.kernel)?.clone();
        let arch = boot.kernel.arch;
        if arch.is_host() {
            return Some((prepared, None));
        }
        let programs = self.programs.iter().find(|(a, _)| *a == arch.name)?.1.clone();
        Some((prepared, Some(programs)))
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Downloads and unpacks what `boots` need and `ready` lacks: each kernel
/// (and another architecture's root), and each other architecture's C
/// programs. One caller at a time: the main thread, or the host's lane.
fn prepare(ready: &std::sync::Mutex<Ready>, boots: &[Boot]) -> Result<()> {
    for boot in boots {
        if !lock(ready).prepared.iter().any(|p| p.spec() == &boot.kernel) {
            let p = vm::prepare(&boot.kernel, &root())?;
            lock(ready).prepared.push(std::sync::Arc::new(p));
        }
        let arch = boot.kernel.arch;
        if !arch.is_host() && !lock(ready).programs.iter().any(|(a, _)| *a == arch.name) {
            let dir = test_programs(arch)?;
            lock(ready).programs.push((arch.name, dir));
        }
    }
    Ok(())
}

/// Runs the host's work and the boots: one after another (`--vm-serial`,
/// one CPU), or in two lanes side by side that each take the next job in
/// turn. The first boot (`auto` on the default kernel, the longest) starts
/// as soon as the machine's own build is done; the other lane first does
/// the host's work, then prepares the other kernels, so the host's mostly
/// single-threaded steps (LTO links, one test file at a time) take what the
/// first VM leaves of the CPUs. Under TCG one VM keeps about 1.3 of the
/// machine's 2 CPUs busy (the guest runs one test file at a time), so a
/// second VM uses the rest. A boot of another kernel starts once the host's
/// work is over: the arm64 guest installs what the host's package test
/// packed. Side by side, each boot's output goes to
/// `target/test-results/vm-<kernel>-<n>.log` and is printed whole when the
/// boot ends; the host's work prints as it goes. A boot that fails (a
/// timeout, a guest that reported nothing) counts its suites as failed and
/// the others go on; its problem comes back for the summary. If the host's
/// work fails (a build, the Rust tests), no boot starts after that, the one
/// under way ends, and that error is returned.
fn run_lanes(host: &HostWork, boots: &[Boot], side_by_side: bool, results: &Path) -> Result<(Vec<Outcome>, Vec<String>)> {
    let what = |boot: &Boot| format!("kernel {}, modes {}", boot.kernel.label(), boot.modes.join("; "));
    let ready = std::sync::Mutex::new(Ready::default());
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let jobs = boots.len() + usize::from(host.runs_suites());
    if !side_by_side || jobs < 2 || boots.is_empty() || cpus < 2 {
        let mut outcomes = host.run()?;
        prepare(&ready, boots)?;
        let mut problems = Vec::new();
        for boot in boots {
            step(&format!("TypeScript tests in the VM, {} (one boot)", what(boot)));
            let (prepared, programs) = lock(&ready).for_boot(boot).expect("prepared above");
            let (o, problem) = run_boot(boot, &prepared, programs, None);
            outcomes.extend(o);
            problems.extend(problem.map(|p| format!("{}: {p}", what(boot))));
        }
        return Ok((outcomes, problems));
    }
    // The first boot starts beside the host's work only on the machine's
    // own architecture: another's addon is cross-built by that work, so
    // such a boot waits for it (as `--vm-only --vm-kernel 6.1/arm64` does).
    if boots[0].kernel.arch.is_host() {
        prepare(&ready, &boots[..1])?;
    }
    let queue = std::sync::Mutex::new(
        [Job::Boot(0), Job::Host].into_iter().chain((1..boots.len()).map(Job::Boot)).collect::<std::collections::VecDeque<Job>>(),
    );
    let changed = std::sync::Condvar::new();
    let host_outcomes = std::sync::Mutex::new(None);
    let finished = std::sync::Mutex::new(Vec::new());
    let lane = || loop {
        let Some(job) = lock(&queue).pop_front() else { break };
        let n = match job {
            Job::Boot(n) => n,
            Job::Host => {
                // A panic here must still wake the lane waiting for it.
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    host.run().and_then(|o| prepare(&ready, boots).map(|()| o))
                }))
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the host's work panicked")));
                if let Err(e) = &r {
                    eprintln!("  the host's work failed: {e:#}\n  no VM boots after it; the one under way ends first");
                }
                lock(&ready).host_done = Some(r.as_ref().map(|_| ()).map_err(|e| format!("{e:#}")));
                *lock(&host_outcomes) = Some(r);
                changed.notify_all();
                continue;
            }
        };
        let boot = &boots[n];
        let got = {
            let mut r = lock(&ready);
            loop {
                match (&r.host_done, r.for_boot(boot)) {
                    (Some(Err(e)), _) => break Err(format!("not booted: the host's work failed: {e}")),
                    (_, Some(got)) => break Ok(got),
                    (Some(Ok(())), None) => break Err("not booted: internal: its kernel was never prepared".into()),
                    (None, None) => r = changed.wait(r).unwrap_or_else(|e| e.into_inner()),
                }
            }
        };
        let (prepared, programs) = match got {
            Ok(got) => got,
            Err(e) => {
                lock(&finished).push((n, Vec::new(), Some(e)));
                continue;
            }
        };
        let log = results.join(format!("vm-{}-{n}.log", boot.kernel.label().replace('/', "-")));
        // Printing and pushing under one lock keeps each log whole.
        {
            let _lock = lock(&finished);
            step(&format!(
                "TypeScript tests in the VM, {} (one boot, beside other work; its output follows when it ends, and is in {})",
                what(boot),
                log.display()
            ));
        }
        let started = Instant::now();
        let (outcomes, problem) = run_boot(boot, &prepared, programs, Some(log.clone()));
        let mut finished = lock(&finished);
        step(&format!("VM output: {} ({:.0}s)", what(boot), started.elapsed().as_secs_f64()));
        match fs::read(&log) {
            Ok(text) => {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&text);
                let _ = out.flush();
            }
            Err(e) => eprintln!("    cannot read {}: {e}", log.display()),
        }
        finished.push((n, outcomes, problem));
    };
    std::thread::scope(|s| {
        s.spawn(lane);
        lane();
    });
    let mut outcomes = host_outcomes.into_inner().unwrap_or_else(|e| e.into_inner()).unwrap_or_else(|| Ok(Vec::new()))?;
    let mut done = finished.into_inner().unwrap_or_else(|e| e.into_inner());
    done.sort_by_key(|(n, ..)| *n);
    let problems = done.iter().filter_map(|(n, _, p)| p.as_ref().map(|p| format!("{}: {p}", what(&boots[*n])))).collect();
    outcomes.extend(done.into_iter().flat_map(|(_, o, _)| o));
    Ok((outcomes, problems))
}

/// The tests' C programs (`test/callers/*.c`, `test/attacks/*.c`) built
/// for `arch` with its cross compiler, statically (the guest's root has
/// only the C library Node.js needs), into `target/test-programs/<arch>/`:
/// the guest of another architecture has no compiler. The tests take them
/// from `CG_TEST_PROGRAMS` (`compileC` in test/helpers.ts, which builds
/// them with gcc where that is unset, with the same flags). With a compat
/// userland ([`Arch::compat_gcc`]), `test/callers/aarch32/*.c` too, with
/// its compiler, into `aarch32/` there.
fn test_programs(arch: &Arch) -> Result<std::path::PathBuf> {
    let (gcc_package, gcc) = arch.cross_gcc;
    crate::setup::apt(&[
        (gcc_package, "builds the tests' C programs for another architecture's guest"),
        (arch.cross_libc, "the C library that compiler links against"),
    ])?;
    let out = root().join("target/test-programs").join(arch.name);
    let mut builds = vec![(gcc, "test/callers", out.clone()), (gcc, "test/attacks", out.clone())];
    if let Some((package, compat_gcc, libc)) = arch.compat_gcc {
        crate::setup::apt(&[
            (package, "builds the tests' 32-bit compat callers for that guest"),
            (libc, "the C library that compiler links against"),
        ])?;
        builds.push((compat_gcc, "test/callers/aarch32", out.join("aarch32")));
    }
    step(&format!("the tests' C programs for {} ({}, into {})", arch.name, builds.iter().map(|b| b.0).collect::<Vec<_>>().join(", "), out.display()));
    for (gcc, dir, out) in builds {
        fs::create_dir_all(&out)?;
        for entry in fs::read_dir(root().join(dir)).with_context(|| format!("reading {dir}"))? {
            let source = entry?.path();
            let Some(stem) = source.file_stem().filter(|_| source.extension().is_some_and(|e| e == "c")) else { continue };
            run(std::process::Command::new(gcc)
                .args(["-static", "-O2", "-pthread", "-Wall", "-Werror", "-o"])
                .arg(out.join(stem))
                .arg(&source))?;
        }
    }
    Ok(out)
}

/// Runs one boot's suites; with `log`, the VM's output goes there; with
/// `programs`, the guest takes the tests' C programs from there
/// ([`test_programs`]). Never fails: a VM that did not end well fails its
/// suites and says why.
fn run_boot(
    Boot { kernel, suites, slowdown, .. }: &Boot,
    prepared: &vm::Prepared,
    programs: Option<std::path::PathBuf>,
    log: Option<std::path::PathBuf>,
) -> (Vec<Outcome>, Option<String>) {
    let output = log.as_ref().map_or_else(|| "the output above".to_string(), |l| l.display().to_string());
    let mut env = vec![("CI".into(), "true".into()), ("CG_EXPECT_AUTO_MODE".into(), kernel.auto_mode.into())];
    if let Some(dir) = programs {
        env.push(("CG_TEST_PROGRAMS".into(), dir.display().to_string()));
    }
    let opts = vm::VmOptions {
        command: vec!["sh".into(), "-c".into(), vm_script(suites, *slowdown)],
        env,
        timeout: VM_SUITE_TIMEOUT,
        // Debian builds the x32 ABI but leaves it off: on, so the
        // tests see x32 chroot calls in every mode.
        kernel_args: vec!["syscall.x32=y".into()],
        kernel: *kernel,
        log,
        ..vm::VmOptions::default()
    };
    let (out_dir, release, mut problem) = match vm::run_prepared(&opts, prepared) {
        Ok(vm) => {
            let problem = (vm.exit_code != 0).then(|| format!("the test script exited with {} (run directory {})", vm.exit_code, vm.run_dir.display()));
            (Some(vm.out_dir), vm.kernel_release, problem)
        }
        // What a timeout cut short still left its reports.
        Err(e) => (e.downcast_ref::<vm::VmTimeout>().map(|t| t.run_dir.join("out")), kernel.label(), Some(format!("{e:#}"))),
    };
    let mut outcomes = Vec::new();
    for Suite { label, mode, full_preemption, files } in suites {
        let out = |name: String| out_dir.as_ref().map(|d| d.join(name));
        // A suite with no report or exit code (cut short) counts as failed.
        let r = out(format!("results-{label}.json")).and_then(|r| read_report(&r).ok()).unwrap_or(Report {
            failed: 1,
            failures: vec![format!("no report: the run ended before vitest wrote it (a crash or a timeout; see {output})")],
            ..Report::default()
        });
        let rc = out(format!("rc-{label}")).and_then(|f| fs::read_to_string(f).ok());
        outcomes.push(Outcome {
            place: "VM".into(),
            kernel: release.clone(),
            mode: match (mode.as_str(), full_preemption, kernel.files) {
                ("auto", false, vm::Files::Only(..)) => {
                    format!("auto→{}, {} file{}", kernel.auto_mode, files.len(), if files.len() == 1 { "" } else { "s" })
                }
                ("auto", false, _) => format!("auto→{}", kernel.auto_mode),
                ("auto", true, _) => "auto, preempt full".into(),
                (m, _, _) => m.to_string(),
            },
            passed: r.passed,
            failed: if rc.as_deref().map(str::trim) == Some("0") { r.failed } else { r.failed.max(1) },
            skipped: r.skipped,
            secs: r.secs,
            failures: r.failures,
        });
    }
    // A script that failed with every suite passing still fails the run.
    if problem.is_some() && outcomes.iter().all(|o| o.failed == 0) {
        if let Some(o) = outcomes.last_mut() {
            o.failed = 1;
        }
    } else if problem.as_deref().is_some_and(|p| p.starts_with("the test script exited")) {
        // Its failed suites say it already.
        problem = None;
    }
    (outcomes, problem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_kernel_exists_and_names_only_test_files_the_vm_runs() {
        for name in vm::DEFAULT_RUN {
            let k = vm::kernel_spec(name).unwrap();
            if let vm::Files::Only(files, why) = k.files {
                assert!(!why.is_empty() && !files.is_empty(), "{name}");
                for f in files {
                    assert!(root().join(f).is_file(), "{name} names {f}, which does not exist");
                    // The arm64 guest runs the install test on what the host installed for it.
                    assert!(k.arch.name == "arm64" || !HOST_ONLY_FILES.contains(f), "{name} names the host-only {f}");
                }
            }
        }
        for f in PER_MODE_FILES.iter().chain(FULL_PREEMPTION_FILES).chain(LEGACY_HOST_FILES) {
            assert!(root().join(f).is_file(), "{f} does not exist");
        }
    }

    #[test]
    fn a_report_names_each_failed_test_and_each_file_that_did_not_run() {
        let path = std::env::temp_dir().join(format!("cg-report-{}.json", std::process::id()));
        let report = serde_json::json!({
            "numPassedTests": 2, "numFailedTests": 1, "numPendingTests": 1, "numTodoTests": 0, "startTime": 1000.0,
            "testResults": [
                { "name": "/r/test/loss.test.ts", "status": "failed", "message": "", "endTime": 4000.0, "assertionResults": [
                    { "fullName": "loss a storm", "status": "failed", "failureMessages": ["\nAssertionError: expected 12 to be greater than 30\n    at x"] },
                    { "fullName": "loss counted", "status": "passed", "failureMessages": [] },
                ]},
                { "name": "/r/test/guard.test.ts", "status": "failed", "message": "Error: Hook timed out\nmore", "endTime": 3000.0, "assertionResults": [] },
            ],
        });
        fs::write(&path, report.to_string()).unwrap();
        let r = read_report(&path).unwrap();
        fs::remove_file(&path).unwrap();
        assert_eq!((r.passed, r.failed, r.skipped, r.secs), (2, 1, 1, 3.0));
        assert_eq!(
            r.failures,
            ["loss.test.ts › loss a storm: AssertionError: expected 12 to be greater than 30", "guard.test.ts: Error: Hook timed out"]
        );
    }
}
