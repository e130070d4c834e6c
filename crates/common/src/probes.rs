//! The one list of chroot-guard's eBPF programs: [`PROBES`], the programs
//! of the attach modes, and [`SERVICE_PROGRAMS`], the guard's and the
//! programs `doctor` and `stacks` use.
//!
//! The loader attaches from them, `doctor` reports from them, and the docs
//! table is generated from them. Add a program here and in `crates/ebpf`,
//! nowhere else.

use crate::Mode;

/// Kernel symbol of the chroot syscall entry on the architecture user space
/// was built for. The syscall wrappers take one `const struct pt_regs *`
/// (since 4.17, `CONFIG_ARCH_HAS_SYSCALL_WRAPPER`).
#[cfg(target_arch = "aarch64")]
pub const SYS_CHROOT: &str = "__arm64_sys_chroot";
/// Kernel symbol of the chroot syscall entry on the architecture user space
/// was built for. The syscall wrappers take one `const struct pt_regs *`
/// (since 4.17, `CONFIG_ARCH_HAS_SYSCALL_WRAPPER`).
#[cfg(not(target_arch = "aarch64"))]
pub const SYS_CHROOT: &str = "__x64_sys_chroot";

/// Kernel symbol of the 32-bit compat chroot entry (`int $0x80` and the
/// other ia32 entries on x86_64). The syscall tracepoints do not fire for
/// compat calls, so tracepoint mode catches them on raw `sys_enter`.
pub const SYS_CHROOT_IA32: &str = "__ia32_sys_chroot";

/// chroot's number for a 32-bit compat call: 61 in the ia32 table
/// (`arch/x86/entry/syscalls/syscall_32.tbl`) and in the ARM EABI one that
/// AArch32 tasks use on arm64 (`arch/arm/tools/syscall.tbl`). arm64 runs
/// them through `__arm64_sys_chroot` (fentry and kprobe modes see them),
/// but its syscall tracepoints skip them as x86_64's do.
pub const COMPAT_CHROOT_NR: i64 = 61;

/// chroot's number for the x32 ABI: `__X32_SYSCALL_BIT` | 161. x32 calls
/// run `__x64_sys_chroot` (fentry and kprobe modes see them), but the
/// syscall tracepoints skip them like compat calls. Kernels build x32 off
/// by default (`syscall.x32=y` turns it on).
pub const X32_CHROOT_NR: i64 = 0x4000_0000 | 161;

/// The LSM call site every chroot passes once the new root is looked up and
/// `CAP_SYS_CHROOT` is checked (`fs/open.c`, `SYSCALL_DEFINE1(chroot)`); it
/// receives the resolved `const struct path *`. Present since 2.6.29 with
/// `CONFIG_SECURITY_PATH`.
pub const SECURITY_PATH_CHROOT: &str = "security_path_chroot";

/// Tracepoint category of the syscall tracepoints.
pub const TRACEPOINT_CATEGORY: &str = "syscalls";

/// BPF program type, as the loader needs to know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgramKind {
    /// `BPF_PROG_TYPE_TRACING`, `BPF_TRACE_FENTRY`.
    FEntry,
    /// `BPF_PROG_TYPE_TRACING`, `BPF_TRACE_FEXIT`.
    FExit,
    /// `BPF_PROG_TYPE_KPROBE`, entry.
    KProbe,
    /// `BPF_PROG_TYPE_KPROBE`, return.
    KRetProbe,
    /// `BPF_PROG_TYPE_TRACEPOINT`, attached in category [`TRACEPOINT_CATEGORY`].
    TracePoint,
    /// `BPF_PROG_TYPE_RAW_TRACEPOINT` (`sys_enter`, `sys_exit`: every
    /// syscall), filtered in the program.
    RawTracePoint,
}

/// What a program contributes to the event of one chroot call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Syscall entry: identity and argument into `PENDING`.
    Enter,
    /// `security_path_chroot` entry: the resolved new root.
    Resolve,
    /// `security_path_chroot` return: the LSM verdict.
    LsmReturn,
    /// Syscall exit: the result, then the event goes to the ring buffer.
    Exit,
}

/// One eBPF program of the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeSpec {
    /// Program (function) name in the object; also the name `bpftool prog`
    /// shows (15 characters at most, the kernel's `BPF_OBJ_NAME_LEN` - 1).
    pub program: &'static str,
    /// Attach mode the program belongs to.
    pub mode: Mode,
    /// Program type.
    pub kind: ProgramKind,
    /// Kernel function (fentry, kprobe) or tracepoint name in
    /// [`TRACEPOINT_CATEGORY`].
    pub target: &'static str,
    /// What the program contributes.
    pub role: Role,
    /// It sees 32-bit compat calls only. A mode whose compat programs the
    /// kernel refuses still runs, and says that compat calls are a blind
    /// spot (`AttachInfo.blindSpots`).
    pub compat: bool,
}

/// Every program of the object, grouped by mode, entry to exit. The loader
/// attaches them exit first, so every call whose entry is seen has its exit
/// seen too; an exit hook that finds no event in flight in `CG_PENDING` (the
/// call began before we attached) emits nothing.
pub const PROBES: &[ProbeSpec] = &[
    ProbeSpec { program: "cg_fentry_sys", mode: Mode::Fentry, kind: ProgramKind::FEntry, target: SYS_CHROOT, role: Role::Enter, compat: false },
    #[cfg(target_arch = "x86_64")]
    ProbeSpec { program: "cg_fentry_sys32", mode: Mode::Fentry, kind: ProgramKind::FEntry, target: SYS_CHROOT_IA32, role: Role::Enter, compat: true },
    ProbeSpec { program: "cg_fentry_lsm", mode: Mode::Fentry, kind: ProgramKind::FEntry, target: SECURITY_PATH_CHROOT, role: Role::Resolve, compat: false },
    ProbeSpec { program: "cg_fexit_lsm", mode: Mode::Fentry, kind: ProgramKind::FExit, target: SECURITY_PATH_CHROOT, role: Role::LsmReturn, compat: false },
    ProbeSpec { program: "cg_fexit_sys", mode: Mode::Fentry, kind: ProgramKind::FExit, target: SYS_CHROOT, role: Role::Exit, compat: false },
    #[cfg(target_arch = "x86_64")]
    ProbeSpec { program: "cg_fexit_sys32", mode: Mode::Fentry, kind: ProgramKind::FExit, target: SYS_CHROOT_IA32, role: Role::Exit, compat: true },
    ProbeSpec { program: "cg_kprobe_sys", mode: Mode::Kprobe, kind: ProgramKind::KProbe, target: SYS_CHROOT, role: Role::Enter, compat: false },
    #[cfg(target_arch = "x86_64")]
    ProbeSpec { program: "cg_kprobe_sys32", mode: Mode::Kprobe, kind: ProgramKind::KProbe, target: SYS_CHROOT_IA32, role: Role::Enter, compat: true },
    ProbeSpec { program: "cg_kprobe_lsm", mode: Mode::Kprobe, kind: ProgramKind::KProbe, target: SECURITY_PATH_CHROOT, role: Role::Resolve, compat: false },
    ProbeSpec { program: "cg_kret_lsm", mode: Mode::Kprobe, kind: ProgramKind::KRetProbe, target: SECURITY_PATH_CHROOT, role: Role::LsmReturn, compat: false },
    ProbeSpec { program: "cg_kret_sys", mode: Mode::Kprobe, kind: ProgramKind::KRetProbe, target: SYS_CHROOT, role: Role::Exit, compat: false },
    #[cfg(target_arch = "x86_64")]
    ProbeSpec { program: "cg_kret_sys32", mode: Mode::Kprobe, kind: ProgramKind::KRetProbe, target: SYS_CHROOT_IA32, role: Role::Exit, compat: true },
    ProbeSpec { program: "cg_tp_enter", mode: Mode::Tracepoint, kind: ProgramKind::TracePoint, target: "sys_enter_chroot", role: Role::Enter, compat: false },
    ProbeSpec { program: "cg_raw_enter32", mode: Mode::Tracepoint, kind: ProgramKind::RawTracePoint, target: "sys_enter", role: Role::Enter, compat: true },
    ProbeSpec { program: "cg_tp_exit", mode: Mode::Tracepoint, kind: ProgramKind::TracePoint, target: "sys_exit_chroot", role: Role::Exit, compat: false },
    ProbeSpec { program: "cg_raw_exit32", mode: Mode::Tracepoint, kind: ProgramKind::RawTracePoint, target: "sys_exit", role: Role::Exit, compat: true },
];

/// The programs of one mode, in attach order.
pub fn probes_for(mode: Mode) -> impl Iterator<Item = &'static ProbeSpec> {
    PROBES.iter().filter(move |p| p.mode == mode)
}

/// Offset of `filename` in the `sys_enter_chroot` tracepoint record: an
/// 8-byte `struct trace_entry`, the 4-byte `__syscall_nr` padded to 8, then
/// the `unsigned long` arguments (`struct syscall_trace_enter`). The layout
/// is the same on every kernel with syscall tracepoints; a test reads it back
/// from tracefs.
pub const TP_ENTER_FILENAME_OFFSET: usize = 16;

/// Offset of `ret` (a `long`) in the `sys_exit_chroot` tracepoint record
/// (`struct syscall_trace_exit`).
pub const TP_EXIT_RET_OFFSET: usize = 16;

/// A way of hooking the kernel, as `doctor` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// `BPF_PROG_TYPE_TRACEPOINT` on a static tracepoint.
    Tracepoint,
    /// `BPF_PROG_TYPE_KPROBE` on a kernel function (needs `CONFIG_KPROBES`).
    Kprobe,
    /// `BPF_PROG_TYPE_TRACING`/`BPF_TRACE_FENTRY` (needs BTF and BPF trampolines).
    Fentry,
    /// `BPF_PROG_TYPE_LSM` on a BPF LSM hook (needs `CONFIG_BPF_LSM` and
    /// `bpf` in the active LSM list).
    Lsm,
    /// `BPF_PROG_TYPE_TRACING`/`BPF_TRACE_ITER`: a BPF iterator (5.8+),
    /// read as a file. Hooks no chroot attach point, so not in
    /// [`Mechanism::ALL`]: `ps` reads tasks with it.
    Iterator,
}

impl Mechanism {
    /// Every mechanism, in report order.
    pub const ALL: [Mechanism; 4] = [Mechanism::Tracepoint, Mechanism::Kprobe, Mechanism::Fentry, Mechanism::Lsm];

    /// Lower-case name, as in JSON and tables.
    pub const fn name(self) -> &'static str {
        match self {
            Mechanism::Tracepoint => "tracepoint",
            Mechanism::Kprobe => "kprobe",
            Mechanism::Fentry => "fentry",
            Mechanism::Lsm => "lsm",
            Mechanism::Iterator => "iter",
        }
    }

    /// The mechanism an attach mode's stack counters use.
    pub const fn of_mode(mode: Mode) -> Mechanism {
        match mode {
            Mode::Fentry => Mechanism::Fentry,
            Mode::Kprobe => Mechanism::Kprobe,
            Mode::Tracepoint => Mechanism::Tracepoint,
        }
    }
}

/// What kind of place in the kernel an attach point is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PointKind {
    /// A static tracepoint in [`TRACEPOINT_CATEGORY`].
    Tracepoint,
    /// A kernel function.
    Function,
    /// A BPF LSM hook function (`bpf_lsm_*`), the attach target of `lsm/…`
    /// programs.
    LsmHook,
}

/// One place on the chroot path that can be hooked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttachPoint {
    /// Tracepoint name (in [`TRACEPOINT_CATEGORY`]) or kernel function.
    pub name: &'static str,
    /// What it is.
    pub kind: PointKind,
    /// The mechanisms that can hook it.
    pub mechanisms: &'static [Mechanism],
}

/// The chroot path's attach points, outermost first: the syscall
/// tracepoints, the syscall entry (native and, on x86_64, 32-bit compat),
/// the LSM call site, and the BPF LSM hook. `doctor` checks each with each
/// of its mechanisms; `stacks` counts kernel stacks at the ones its mode
/// can hook.
pub const ATTACH_POINTS: &[AttachPoint] = &[
    AttachPoint { name: "sys_enter_chroot", kind: PointKind::Tracepoint, mechanisms: &[Mechanism::Tracepoint] },
    AttachPoint { name: "sys_exit_chroot", kind: PointKind::Tracepoint, mechanisms: &[Mechanism::Tracepoint] },
    AttachPoint { name: SYS_CHROOT, kind: PointKind::Function, mechanisms: &[Mechanism::Kprobe, Mechanism::Fentry] },
    #[cfg(target_arch = "x86_64")]
    AttachPoint { name: SYS_CHROOT_IA32, kind: PointKind::Function, mechanisms: &[Mechanism::Kprobe, Mechanism::Fentry] },
    AttachPoint { name: SECURITY_PATH_CHROOT, kind: PointKind::Function, mechanisms: &[Mechanism::Kprobe, Mechanism::Fentry] },
    AttachPoint {
        name: BPF_LSM_PATH_CHROOT,
        kind: PointKind::LsmHook,
        mechanisms: &[Mechanism::Kprobe, Mechanism::Fentry, Mechanism::Lsm],
    },
];

/// The BPF LSM hook for chroot (`security/bpf/hooks.c`, 5.7+); `lsm/path_chroot`
/// programs attach here.
pub const BPF_LSM_PATH_CHROOT: &str = "bpf_lsm_path_chroot";

/// The LSM hook name `lsm/…` programs are loaded with.
pub const LSM_HOOK: &str = "path_chroot";

/// What a program outside the attach modes ([`SERVICE_PROGRAMS`]) is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// The guard: decides each chroot by policy at the BPF LSM hook
    /// ([`LSM_HOOK`]) and sends the decision to the ring buffer.
    Guard,
    /// A check program: `doctor` loads it and attaches it at each of the
    /// [`ATTACH_POINTS`] its mechanism can hook, to learn what the kernel
    /// allows; `stacks` counts kernel stacks with it at the same points (for
    /// the mechanisms of attach modes, [`Mechanism::of_mode`]).
    Check,
    /// `ps`: an `iter/task` iterator ([`PS_ITERATOR`]) that writes a
    /// record per chrooted process (`crate::tasks::TaskRecord`).
    Ps,
}

/// The kernel iterator `ps`'s program walks (`iter/task`: every task,
/// threads included), loaded against the kernel's `bpf_iter_task`.
pub const PS_ITERATOR: &str = "task";

/// One program of the object outside the attach modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceProgram {
    /// Program (function) name in the object, as in [`ProbeSpec::program`].
    pub program: &'static str,
    /// What it is for.
    pub service: Service,
    /// How it hooks the kernel: it attaches at the [`ATTACH_POINTS`] with
    /// this mechanism.
    pub mechanism: Mechanism,
}

/// The object's programs that are not in [`PROBES`]: the guard's, then one
/// check program per mechanism.
pub const SERVICE_PROGRAMS: &[ServiceProgram] = &[
    ServiceProgram { program: "cg_lsm_chroot", service: Service::Guard, mechanism: Mechanism::Lsm },
    ServiceProgram { program: "cg_stk_tp", service: Service::Check, mechanism: Mechanism::Tracepoint },
    ServiceProgram { program: "cg_stk_kprobe", service: Service::Check, mechanism: Mechanism::Kprobe },
    ServiceProgram { program: "cg_stk_fentry", service: Service::Check, mechanism: Mechanism::Fentry },
    ServiceProgram { program: "cg_chk_lsm", service: Service::Check, mechanism: Mechanism::Lsm },
    ServiceProgram { program: "cg_iter_task", service: Service::Ps, mechanism: Mechanism::Iterator },
];

/// The program of [`SERVICE_PROGRAMS`] for `service` and `mechanism`; in a
/// constant, a pair without one does not build.
const fn service_program(service: Service, mechanism: Mechanism) -> &'static str {
    let mut i = 0;
    while i < SERVICE_PROGRAMS.len() {
        let p = &SERVICE_PROGRAMS[i];
        if p.service as u8 == service as u8 && p.mechanism as u8 == mechanism as u8 {
            return p.program;
        }
        i += 1;
    }
    panic!("no such program in SERVICE_PROGRAMS")
}

/// The guard's program: `lsm/path_chroot`, deciding each chroot by policy.
pub const GUARD_PROGRAM: &str = service_program(Service::Guard, Mechanism::Lsm);

/// `ps`'s program: the `iter/task` iterator.
pub const PS_PROGRAM: &str = service_program(Service::Ps, Mechanism::Iterator);

/// The check program of each mechanism, serving `stacks` and `doctor`.
pub const fn check_program(m: Mechanism) -> &'static str {
    service_program(Service::Check, m)
}

// Every mechanism has its check program, or this does not build.
const _: () = {
    let mut i = 0;
    while i < Mechanism::ALL.len() {
        check_program(Mechanism::ALL[i]);
        i += 1;
    }
};
