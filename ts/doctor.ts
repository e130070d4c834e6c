/**
 * `doctor()`: what this kernel allows on the chroot path, found by loading
 * and attaching real programs, the typed answer to `bpftrace -l '*chroot*'`.
 * @module
 */
import type { AttachMode, Refusal } from './errors.js';
import { native } from './native.js';
import { refusalOf } from './session.js';

/** A way of hooking the kernel. */
export type Mechanism = 'tracepoint' | 'kprobe' | 'fentry' | 'lsm';

/**
 * Why the kernel would not let a mechanism hook a point. `code`: `EPERM`
 * (refused at load), `NO_KPROBES` (no CONFIG_KPROBES), `NO_BTF` (no kernel
 * BTF), `NO_BTF_FUNC`, `LSM_INACTIVE` (BPF LSM not in the active LSM list),
 * `NO_PRIVILEGES` (missing CAP_BPF/CAP_PERFMON), `NO_TRACEPOINT`,
 * `PREEMPT_FULL` (the guard's LSM program on a fully preemptible kernel
 * whose trampoline would skip it on a CPU where a decision is preempted),
 * `VERIFIER` or `ATTACH_FAILED`. Lockdown, when active, is named in `reason`.
 */
export interface Denial {
  readonly code: string;
  readonly errno: string | null;
  readonly reason: string;
  readonly verifierLog?: string;
}

/** One mechanism tried on one attach point: loaded, attached, detached. */
export interface Check {
  readonly mechanism: Mechanism;
  readonly ok: boolean;
  /** Why not, when `ok` is false. */
  readonly denial: Denial | null;
}

/** A place on the chroot path and what can hook it. */
export interface AttachPointReport {
  /** `syscalls:sys_enter_chroot`, `__x64_sys_chroot`, `security_path_chroot`, `bpf_lsm_path_chroot`, … */
  readonly name: string;
  readonly kind: 'tracepoint' | 'function' | 'lsm-hook';
  /**
   * Whether this kernel has it (tracefs event, kallsyms symbol or BTF
   * function); null when it cannot be told (tracefs is root-only).
   */
  readonly present: boolean | null;
  /** One per mechanism that can hook this kind of point (empty when absent). */
  readonly checks: readonly Check[];
}

/** An attach mode tried with chroot-guard's real programs. */
export interface ModeReport {
  readonly mode: AttachMode;
  readonly ok: boolean;
  readonly refusal: Refusal | null;
  /** When `ok`: compat-only programs the kernel refused, so 32-bit compat chroot calls this mode would not see, and exit kretprobes whose misses could not be counted (`MISSES_UNCOUNTED`), as `AttachInfo.blindSpots`. */
  readonly compatBlindSpots: readonly Refusal[];
}

/** A way to change a task's root that no chroot-guard program sees. */
export interface BlindSpot {
  /** The system calls. */
  readonly calls: string;
  /** What they do, why `lsm/path_chroot` and the watch probes miss it, and what still shows. */
  readonly why: string;
}

/**
 * Root changes that never call chroot(2), so neither the watch probes nor
 * the guard (`lsm/path_chroot`) see them. The same on every kernel: they
 * are what the hooks are, not what this kernel allows.
 */
export const BLIND_SPOTS: readonly BlindSpot[] = [
  {
    calls: 'pivot_root(2)',
    why: "swaps a mount namespace's root mount (LSM hook sb_pivotroot, not path_chroot); it needs CAP_SYS_ADMIN over the mount namespace, so an unprivileged caller needs namespaces of its own, which initialNamespaces rules and events' mntNs/userNs show on its next chroot(2)",
  },
  {
    calls: 'setns(2), unshare(2) of a mount namespace',
    why: "a task that joins or makes another mount namespace gets that namespace's root without any chroot(2); events' mntNs and userNs, and initialNamespaces rules, see it from its next chroot(2) on",
  },
];

/**
 * The loader's memory of refused modes after `doctor()`: what mode `auto`
 * skips without loading anything (see `Refusal.remembered`).
 */
export interface RememberedRefusals {
  /** The file that holds it: `/run/chroot-guard/refused-modes.json` (root's, 0600, in a 0700 directory). */
  readonly file: string;
  /** The refusals remembered now, best mode first, each with `remembered: true`. Empty when nothing is. */
  readonly refusals: readonly Refusal[];
  /**
   * Whether `doctor()` rewrote the file with what its attempts found (modes
   * that attached are forgotten, refusals certain to repeat remembered).
   * False when it could not try the modes (no privileges, no BTF) or the
   * file could not be written.
   */
  readonly refreshed: boolean;
  /** What went wrong reading or writing it (a planted or foreign file, a directory not chroot-guard's, no privileges), or null. */
  readonly problem: string | null;
}

/** One BPF feature chroot-guard needs ({@link DoctorReport} `kernel.features`). */
export interface KernelFeature {
  /** What it is: `task storage in tracing programs (BPF_MAP_TYPE_TASK_STORAGE)`. */
  readonly name: string;
  /** The mainline release that brought it, `"5.12"`. */
  readonly since: string;
  /** `every mode` or `the guard`. */
  readonly neededBy: string;
  /** Whether this kernel's BTF shows it. */
  readonly present: boolean;
}

/** What `doctor()` found. */
export interface DoctorReport {
  /** Kernel and process facts. */
  readonly kernel: {
    /** `uname -r`. */
    readonly release: string;
    /** `uname -m`. */
    readonly machine: string;
    /** Kernel BTF at /sys/kernel/btf/vmlinux. */
    readonly btf: boolean;
    /** Lockdown mode (`none`, `integrity`, `confidentiality`), or null without the lockdown LSM. */
    readonly lockdown: string | null;
    /** Active LSMs in order, or null if securityfs is unreadable. */
    readonly lsms: readonly string[] | null;
    /** Whether the kernel can create kprobes. */
    readonly kprobes: boolean;
    /**
     * The BPF features chroot-guard needs, told from the kernel's BTF (an
     * enum member of the UAPI or a struct field, so backports count), each
     * with the mainline release that brought it (`"5.12"`) and what needs it
     * (`every mode`; `the guard (watch uses the legacy object without it)`,
     * the full object's; `the guard`, the policy program's). Empty without
     * BTF. A missing `every mode` feature makes every mode fail with
     * `UNSUPPORTED_KERNEL`; without a full-object feature watch, `ps` and
     * `stacks` run the legacy object (5.8 to 5.12 kernels); a missing
     * feature of either `the guard` kind makes `chrootGuard()` fail with
     * `LSM_UNAVAILABLE`.
     */
    readonly features: readonly KernelFeature[];
    /** Null when this process may load BPF programs, else what it lacks. */
    readonly missingPrivileges: string | null;
  };
  /** Attach points, outermost first. */
  readonly points: readonly AttachPointReport[];
  /** Modes, best first. */
  readonly modes: readonly ModeReport[];
  /** The mode `chrootWatch({ mode: 'auto' })` would use, or null if none works. */
  readonly auto: AttachMode | null;
  /** Root changes no program sees ({@link BLIND_SPOTS}). */
  readonly blindSpots: readonly BlindSpot[];
  /** The memory of refused modes, refreshed from `modes`. */
  readonly remembered: RememberedRefusals;
}

/**
 * Tries every chroot attach point with every mechanism, and every attach
 * mode with the real programs, loading and detaching each; nothing stays
 * loaded. Then refreshes the memory of refused modes from what the modes'
 * attempts found (`remembered`), never from what was remembered before.
 * Works without privileges too (then every check says `NO_PRIVILEGES` and
 * the memory is left as it is). Takes about a second.
 * @throws {ChrootGuardError} `NATIVE_UNAVAILABLE` (as a rejection) when the addon cannot load.
 */
export async function doctor(): Promise<DoctorReport> {
  const r = await native().doctor();
  const denial = (d: { code: string; errno?: string | null; reason: string; verifierLog?: string | null } | null | undefined): Denial | null =>
    d ? { code: d.code, errno: d.errno ?? null, reason: d.reason, ...(d.verifierLog ? { verifierLog: d.verifierLog } : {}) } : null;
  return {
    kernel: {
      release: r.kernel.release,
      machine: r.kernel.machine,
      btf: r.kernel.btf,
      lockdown: r.kernel.lockdown ?? null,
      lsms: r.kernel.lsms ?? null,
      kprobes: r.kernel.kprobes,
      features: r.kernel.features.map((f) => ({ name: f.name, since: f.since, neededBy: f.neededBy, present: f.present })),
      missingPrivileges: r.kernel.missingPrivileges ?? null,
    },
    points: r.points.map((p) => ({
      name: p.name,
      kind: p.kind as AttachPointReport['kind'],
      present: p.present ?? null,
      checks: p.checks.map((c) => ({ mechanism: c.mechanism as Mechanism, ok: c.ok, denial: denial(c.denial) })),
    })),
    modes: r.modes.map((m) => ({ mode: m.mode as AttachMode, ok: m.ok, refusal: m.refusal ? refusalOf(m.refusal) : null, compatBlindSpots: m.blindSpots.map(refusalOf) })),
    auto: (r.auto ?? null) as AttachMode | null,
    blindSpots: BLIND_SPOTS,
    remembered: { file: r.memory.file, refusals: r.memory.refusals.map(refusalOf), refreshed: r.memory.refreshed, problem: r.memory.problem ?? null },
  };
}
