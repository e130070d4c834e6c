/**
 * The options of `chrootWatch()` and their checks, apart from the
 * Observable: the CLI's `watch` joins a session with them directly and so
 * never loads RxJS.
 * @module
 */
import type { AttachMode } from './errors.js';
import { MODE_CHOICES, check, checkRingBufferBytes } from './errors.js';
import type { LostReport } from './batch.js';
import type { AttachInfo, SessionOptions } from './session.js';
import { DEFAULT_RING_BUFFER_BYTES } from './defaults.js';
import { isFlowOption, type Flow } from './flow.js';

/** Options of `chrootWatch()`. Filters apply in the kernel. */
export interface ChrootWatchOptions {
  /**
   * Attach mode. `'auto'` (default) tries fentry, then kprobe, then the
   * syscall tracepoints, and uses the first the kernel allows, skipping a
   * mode refused earlier on this boot in a way certain to repeat (reported
   * in `AttachInfo.refused` with `remembered: true`; see
   * `Refusal.remembered`); a named mode is always tried, and fails
   * with `MODE_UNAVAILABLE` if refused.
   */
  readonly mode?: 'auto' | AttachMode;
  /** Only calls from this process id (tgid). */
  readonly pid?: number;
  /** Only calls by this real uid. */
  readonly uid?: number;
  /** Only calls whose comm is exactly this (1 to 15 bytes; the kernel cuts comm at 15). */
  readonly comm?: string;
  /**
   * Size of the kernel ring buffer in bytes: a power of two from the page
   * size to 1 GiB. Default {@link DEFAULT_RING_BUFFER_BYTES}. One event takes
   * about 100 bytes plus its two paths. This is the whole buffering budget:
   * while the subscriber is busy, user space holds at most five batches of
   * min(ringBufferBytes, 2 MiB) bytes; past that the kernel ring buffer
   * fills and its drops are reported to `onLost`.
   */
  readonly ringBufferBytes?: number;
  /**
   * Tracepoint mode: also see 32-bit compat (`int $0x80` on x86_64, AArch32
   * tasks on arm64) and x32 calls, which reach no syscall tracepoint, with
   * raw `sys_enter`/`sys_exit`
   * programs. Off by default: they run on every syscall of the host and
   * slow each one (bench/RESULTS.md, raw-syscall coverage); while off,
   * `AttachInfo.blindSpots` names the calls not seen (`COMPAT_OFF`).
   * fentry and kprobe modes see compat calls either way, at no such cost.
   */
  readonly compat?: boolean;
  /** Called once per subscription when the programs are attached: which mode, and why better ones were refused. */
  readonly onAttach?: (info: AttachInfo) => void;
  /** Called when the kernel reports events it could not deliver (full ring buffer). Never silent. */
  readonly onLost?: (report: LostReport) => void;
  /**
   * Flow control for a consumer that cannot keep up ({@link Flow}): while
   * it is paused no event is emitted, and what the kernel ring buffer
   * cannot hold meanwhile is counted (`onLost`, `ringBufferFull`). Not part
   * of what makes subscribers share a session.
   */
  readonly flow?: Flow;
}

function isU32(n: unknown): n is number {
  return typeof n === 'number' && Number.isInteger(n) && n >= 0 && n <= 0xffffffff;
}

/**
 * Validates options and gives the session they ask for.
 * @throws {ChrootGuardError} `INVALID_ARGUMENT` naming the bad option.
 * @internal
 */
export function watchSessionOptions(o: ChrootWatchOptions): SessionOptions {
  check(typeof o === 'object' && o !== null, 'options must be an object');
  const mode = o.mode ?? 'auto';
  check(MODE_CHOICES.includes(mode), `mode must be one of ${MODE_CHOICES.join(', ')}; got ${JSON.stringify(o.mode)}`);
  check(o.pid === undefined || (isU32(o.pid) && o.pid > 0), `pid must be a positive integer; got ${String(o.pid)}`);
  check(o.uid === undefined || isU32(o.uid), `uid must be an integer from 0 to 4294967295; got ${String(o.uid)}`);
  if (o.comm !== undefined) {
    const bytes = typeof o.comm === 'string' ? Buffer.byteLength(o.comm) : -1;
    check(bytes >= 1 && bytes <= 15, `comm must be 1 to 15 bytes (the kernel keeps 15 of a task's name); got ${JSON.stringify(o.comm)}`);
  }
  const ring = checkRingBufferBytes(o.ringBufferBytes ?? DEFAULT_RING_BUFFER_BYTES);
  check(o.compat === undefined || typeof o.compat === 'boolean', `compat must be a boolean; got ${String(o.compat)}`);
  for (const k of ['onAttach', 'onLost'] as const) {
    check(o[k] === undefined || typeof o[k] === 'function', `${k} must be a function`);
  }
  check(isFlowOption(o.flow), 'flow must be a Flow');
  return {
    mode: mode as SessionOptions['mode'],
    ringBufferBytes: ring,
    compat: o.compat === true,
    ...(o.pid !== undefined ? { pid: o.pid } : {}),
    ...(o.uid !== undefined ? { uid: o.uid } : {}),
    ...(o.comm !== undefined ? { comm: o.comm } : {}),
  };
}
