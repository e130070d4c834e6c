/**
 * Errors of chroot-guard. Every failure is a {@link ChrootGuardError} with a
 * stable `code`; kernel failures arrive on an Observable's error channel,
 * never as a synchronous throw (argument errors are thrown when a function is
 * called, before anything is subscribed).
 * @module
 */
import type { BindingFailure } from './native/binding.cjs';

/** Every {@link ChrootGuardErrorCode}, one list: the type is derived from it. */
export const CHROOT_GUARD_ERROR_CODES = [
  'EPERM',
  'UNSUPPORTED_KERNEL',
  'MODE_UNAVAILABLE',
  'LOAD_FAILED',
  'INVALID_ARGUMENT',
  'INVALID_POLICY',
  'INVALID_CONFIG',
  'UNSAFE_POLICY_FILE',
  'LSM_UNAVAILABLE',
  'MOUNT_FAILED',
  'PIN_FAILED',
  'NATIVE_UNAVAILABLE',
  'INVALID_RECORDING',
  'INTERNAL',
] as const;

/**
 * Stable error codes:
 * - `EPERM`: the process may not load BPF programs (needs root, or CAP_BPF and CAP_PERFMON).
 * - `UNSUPPORTED_KERNEL`: no kernel BTF, the kernel lacks a BPF feature every
 *   program needs (the message names it and the release that brought it;
 *   `doctor()` lists them as `kernel.features`), or no attach mode works.
 * - `MODE_UNAVAILABLE`: the requested mode was refused; `refusals` says why.
 * - `LOAD_FAILED`: the verifier rejected a program; see `verifierLog`.
 * - `INVALID_ARGUMENT`: a bad option, detected when the function is called.
 * - `INVALID_POLICY`: a policy that does not parse or validate (see `PolicyError.problems`).
 * - `INVALID_CONFIG`: an agent configuration that does not parse or validate (see `ConfigError.problems`, the same shape).
 * - `UNSAFE_POLICY_FILE`: a policy file about to be loaded into the kernel (`enforce`, the agent's guard) that a user other
 *   than root could change: it, a directory above it or a symbolic link on the way is owned by another user or writable
 *   by group or others (see `UnsafePolicyFileError`).
 * - `LSM_UNAVAILABLE`: the BPF LSM cannot run on this kernel, or it lacks a BPF feature
 *   the policy program needs (`bpf_loop()`; `doctor` says which), or it preempts kernel
 *   code and would skip a decision preempted on a CPU (`PREEMPT_FULL` in the reason:
 *   5.17 to 6.1 before the kernel left that recursion check to tracing programs).
 * - `MOUNT_FAILED`: tracefs or bpffs is missing and could not be mounted.
 * - `PIN_FAILED`: pinning a guard in bpffs, or reading, updating or removing a pinned one, failed.
 * - `NATIVE_UNAVAILABLE`: the native addon could not be loaded (platform, install).
 * - `INVALID_RECORDING`: a recording (`replay`, `learn`) cannot be read.
 * - `INTERNAL`: a bug; please report it.
 */
export type ChrootGuardErrorCode = (typeof CHROOT_GUARD_ERROR_CODES)[number];

/**
 * The codes only the TypeScript layer raises; every other code comes from
 * the loader (`Error::code` in `crates/loader/src/error.rs`, listed by the
 * addon's `errorCodes()`, and a test holds the two lists equal).
 * @internal
 */
export const TS_ONLY_ERROR_CODES: readonly ChrootGuardErrorCode[] = ['INVALID_POLICY', 'INVALID_CONFIG', 'UNSAFE_POLICY_FILE', 'NATIVE_UNAVAILABLE', 'INVALID_RECORDING'];

/** Whether `code` is one of {@link CHROOT_GUARD_ERROR_CODES}. */
export function isChrootGuardErrorCode(code: unknown): code is ChrootGuardErrorCode {
  return (CHROOT_GUARD_ERROR_CODES as readonly unknown[]).includes(code);
}

/**
 * Every {@link AttachMode}, best first (the order `auto` tries them in):
 * `Mode::ALL` in `crates/common`, which the addon's `attachModes()` lists;
 * a test holds the two equal.
 * @internal
 */
export const ATTACH_MODES = ['fentry', 'kprobe', 'tracepoint'] as const;

/** An attach mode: where in the kernel the chroot path is hooked. */
export type AttachMode = (typeof ATTACH_MODES)[number];

/** The modes an option may ask for: `auto`, then each of {@link ATTACH_MODES}. @internal */
export const MODE_CHOICES: readonly string[] = ['auto', ...ATTACH_MODES];

/**
 * Why the kernel refused one attach mode. Produced by the loader when it
 * tries a mode (`BPF_PROG_LOAD` then attach) and the kernel says no.
 */
export interface Refusal {
  /** The refused mode. */
  readonly mode: AttachMode;
  /** The eBPF program that failed, e.g. `cg_fentry_sys`. */
  readonly program: string;
  /** Kernel function or tracepoint it targets, e.g. `__x64_sys_chroot`. */
  readonly target: string;
  /** `load` (BPF_PROG_LOAD) or `attach` (link / perf event). */
  readonly stage: 'load' | 'attach';
  /**
   * Reason code: `EPERM` (the kernel refuses this program type), `NO_KPROBES`
   * (kernel without CONFIG_KPROBES), `NO_BTF_FUNC` (target not in kernel
   * BTF), `NO_BTF` (the kernel's BTF could not be read), `NO_TRACEPOINT`,
   * `PREEMPT_FULL` (fentry mode on a fully preemptible kernel, where the
   * kernel would skip preempted programs uncounted; never remembered),
   * `VERIFIER` (see `verifierLog`) or `ATTACH_FAILED`; in `blindSpots`, also
   * `COMPAT_OFF` (compat programs left off on purpose) and
   * `MISSES_UNCOUNTED` (a kprobe-mode exit kretprobe attached through the
   * perf kprobe PMU: the calls whose return it misses cannot be counted).
   */
  readonly code: string;
  /** Symbolic errno the kernel returned, e.g. `EPERM`, or null. */
  readonly errno: string | null;
  /** A sentence saying what failed and why. */
  readonly reason: string;
  /** The verifier's log when `code` is `VERIFIER` (a remembered one keeps its last 8 KiB). */
  readonly verifierLog?: string;
  /**
   * `false` for an attempt made now. `true` when mode `auto` skipped this
   * mode without loading anything, because an earlier attempt on this boot,
   * kernel, eBPF object (its SHA-256) and capability set was refused in a
   * way certain to repeat (codes `EPERM` at load, `NO_BTF_FUNC`,
   * `NO_KPROBES`, and `VERIFIER` for the same options); the other fields
   * are that attempt's. Kept by the loader (`crates/loader/src/memory.rs`)
   * in `/run/chroot-guard/refused-modes.json` (root's, 0600); a forced mode
   * and `doctor()` always try for real, and `doctor()` refreshes it.
   */
  readonly remembered: boolean;
}

const REMEDIES: Record<ChrootGuardErrorCode, string> = {
  EPERM: 'run as root (sudo), or grant the process CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)',
  UNSUPPORTED_KERNEL:
    'chroot-guard needs kernel BTF (CONFIG_DEBUG_INFO_BTF=y), Linux 5.8 or later (or the BPF features the message names, backported), and one of: BPF trampolines (fentry), CONFIG_KPROBES, or syscall tracepoints (CONFIG_FTRACE_SYSCALLS)',
  MODE_UNAVAILABLE: "use mode 'auto' to fall back to the best mode this kernel allows",
  LOAD_FAILED: 'the BPF verifier rejected a program: please report it with error.verifierLog',
  INVALID_ARGUMENT: 'fix the option named above',
  INVALID_POLICY: 'fix the policy at the positions above (`chroot-guard check FILE` validates without root)',
  INVALID_CONFIG: 'fix the agent config at the positions above (`chroot-guard agent --check-config --config FILE` validates without root; see agent.schema.json)',
  UNSAFE_POLICY_FILE:
    'a policy loaded into the kernel must be one only root can change: the file, every directory above it and every symbolic link on the way owned by root and not writable by group or others (a sticky directory such as /tmp excepted, holding root\'s entries); `chroot-guard check` reads any file',
  LSM_UNAVAILABLE:
    'enforcement needs Linux 5.17 or later (bpf_loop) and a kernel that loads BPF LSM programs (CONFIG_BPF_LSM, bpf in the active LSM list via lsm=...,bpf, and no lockdown or platform policy refusing them: the reason above says which failed); `chroot-guard doctor` shows what this kernel allows, and `enforce --audit` reports would-be decisions from the watch probes instead',
  MOUNT_FAILED: 'mount it by hand, e.g. mount -t tracefs tracefs /sys/kernel/tracing',
  PIN_FAILED: 'see what is pinned with `chroot-guard status`; `chroot-guard unload` removes a pinned guard, whole or broken',
  NATIVE_UNAVAILABLE: 'prebuilt binaries exist for the platforms named above; elsewhere, build from source with cargo xtask build',
  INVALID_RECORDING: 'give a file (or - for stdin) that `chroot-guard watch --json` or `enforce --json` wrote',
  INTERNAL: 'this is a bug in chroot-guard: please report it',
};

/** The remedy sentence for a code, as appended to error messages. */
export function remedyFor(code: ChrootGuardErrorCode): string {
  return REMEDIES[code];
}

/** Options of {@link ChrootGuardError}. */
export interface ChrootGuardErrorOptions {
  /** Modes the kernel refused on the way to this error. */
  refusals?: readonly Refusal[];
  /** Verifier log of a rejected program. */
  verifierLog?: string;
  /** The underlying error, kept on `cause`. */
  cause?: unknown;
}

/**
 * A chroot-guard failure. `message` ends with a remedy; `code` is stable.
 * @example
 * chrootWatch().subscribe({ error: (e: ChrootGuardError) => console.error(e.code, e.message) })
 */
export class ChrootGuardError extends Error {
  /** Stable code, see {@link ChrootGuardErrorCode}. */
  readonly code: ChrootGuardErrorCode;
  /** Modes the kernel refused, best first (empty when not relevant). */
  readonly refusals: readonly Refusal[];
  /** Verifier log when a program was rejected (`LOAD_FAILED`). */
  readonly verifierLog: string | undefined;

  constructor(code: ChrootGuardErrorCode, message: string, options: ChrootGuardErrorOptions = {}) {
    super(`${message} (${code}): ${remedyFor(code)}`, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'ChrootGuardError';
    this.code = code;
    this.refusals = options.refusals ?? [];
    this.verifierLog = options.verifierLog;
  }
}

/**
 * The error a failure from the addon stands for (a result's `failure`).
 * A code outside {@link CHROOT_GUARD_ERROR_CODES} (an addon newer or older
 * than this file, or a bug) becomes `INTERNAL`, its message naming the code.
 * @internal
 */
export function errorFromBinding(f: BindingFailure, extra: ChrootGuardErrorOptions = {}): ChrootGuardError {
  const options = { ...extra, ...(f.verifierLog ? { verifierLog: f.verifierLog } : {}) };
  const code = f.code;
  if (isChrootGuardErrorCode(code)) return new ChrootGuardError(code, f.message, options);
  return new ChrootGuardError('INTERNAL', `${f.message} (native error code ${JSON.stringify(code)}, unknown to this version)`, options);
}

/** Throws `INVALID_ARGUMENT` unless `ok`. */
export function check(ok: boolean, message: string): asserts ok {
  if (!ok) throw new ChrootGuardError('INVALID_ARGUMENT', message);
}

/** Throws `INVALID_ARGUMENT` unless `bytes` is a ring buffer size the kernel takes. */
export function checkRingBufferBytes(bytes: unknown): number {
  check(
    typeof bytes === 'number' && Number.isInteger(bytes) && bytes >= 4096 && bytes <= 1 << 30 && (bytes & (bytes - 1)) === 0,
    `ringBufferBytes must be a power of two from 4096 to 1073741824; got ${String(bytes)}`,
  );
  return bytes;
}
