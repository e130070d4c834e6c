/**
 * `countStacks()`: distinct kernel stacks at each chroot hook, with counts,
 * the typed answer to `bpftrace -e 'k:*chroot* { @[kstack] = count(); }'`.
 * @module
 */
import type { AttachMode, Refusal } from './errors.js';
import { callUser } from './callback.js';
import { MODE_CHOICES, check, errorFromBinding } from './errors.js';
import { native } from './native.js';
import { refusalOf } from './session.js';

/** One kernel stack frame, symbolized from /proc/kallsyms. */
export interface StackFrame {
  /** Instruction address (hex string, e.g. `0xffffffff81a88e85`). */
  readonly address: string;
  /** Kernel symbol, or null when not found. */
  readonly symbol: string | null;
  /** Bytes from the symbol's start. */
  readonly offset: number;
}

/** A distinct stack at one hook. */
export interface KernelStack {
  /** The hook: a kernel function (`security_path_chroot`) or `syscalls:<tracepoint>`. */
  readonly hook: string;
  /** How many times this stack was seen. */
  readonly count: number;
  /**
   * Frames, innermost first. Empty when the kernel gave no kernel stack at
   * this hook: at syscall tracepoints some kernels (6.1) hand BPF the
   * user-mode registers; kprobe and fentry hooks always have one.
   */
  readonly frames: readonly StackFrame[];
}

/** What {@link countStacks} found. */
export interface StackReport {
  /** The attach mode of the counters. */
  readonly mode: AttachMode;
  /** Hooks counted. */
  readonly hooks: readonly string[];
  /** Hooks of the mode that would not attach: `hook: reason (CODE)`. */
  readonly skipped: readonly string[];
  /** Better modes the kernel refused. */
  readonly refused: readonly Refusal[];
  /** Distinct stacks, most frequent first. */
  readonly stacks: readonly KernelStack[];
}

/** Options of {@link countStacks}. */
export interface CountStacksOptions {
  /** `auto` (default): fentry, then kprobe, then tracepoints. */
  readonly mode?: 'auto' | AttachMode;
  /** How long to count, in ms (default 5000). Ignored once `signal` aborts. */
  readonly durationMs?: number;
  /** Stops counting early (the counts so far are returned). */
  readonly signal?: AbortSignal;
  /** Called once the counters are attached (start your workload here). What it throws is reported as an uncaught error on a later tick; counting goes on. */
  readonly onAttach?: (info: { mode: AttachMode; hooks: readonly string[] }) => void;
}

/**
 * Attaches a kernel-stack counter (a stack trace map) at every chroot hook
 * the mode reaches, counts for `durationMs`, then detaches and returns the
 * symbolized stacks. Needs root, or CAP_BPF and CAP_PERFMON.
 * @throws {ChrootGuardError} (as a rejection) `EPERM`, `UNSUPPORTED_KERNEL`,
 * `MODE_UNAVAILABLE`; `INVALID_ARGUMENT` at call time.
 */
export async function countStacks(options: CountStacksOptions = {}): Promise<StackReport> {
  const mode = options.mode ?? 'auto';
  const durationMs = options.durationMs ?? 5000;
  check(MODE_CHOICES.includes(mode), `mode must be ${MODE_CHOICES.slice(0, -1).join(', ')} or ${MODE_CHOICES.at(-1)}; got ${JSON.stringify(mode)}`);
  check(Number.isFinite(durationMs) && durationMs >= 0, `durationMs must be a non-negative number; got ${String(durationMs)}`);
  const counters = new (native().BindingStacks)(mode);
  try {
    const started = await counters.start();
    const refused = started.refusals.map(refusalOf);
    if (started.failure) throw errorFromBinding(started.failure, { refusals: refused });
    const attached = { mode: started.mode as AttachMode, hooks: started.hooks };
    callUser(options.onAttach, attached);
    await new Promise<void>((resolve) => {
      if (options.signal?.aborted) return resolve();
      const timer = setTimeout(done, durationMs);
      function done() {
        clearTimeout(timer);
        options.signal?.removeEventListener('abort', done);
        resolve();
      }
      options.signal?.addEventListener('abort', done);
    });
    const stacks = (await counters.collect()).map((s) => ({
      hook: s.hook,
      count: s.count,
      frames: s.frames.map((f) => ({ address: f.address, symbol: f.symbol ?? null, offset: f.offset })),
    }));
    return { ...attached, skipped: started.skipped, refused, stacks };
  } finally {
    counters.close();
  }
}
