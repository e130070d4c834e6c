/**
 * Output of the CLI: event lines (table or JSON), errors with their remedy,
 * and the exit codes every command shares.
 * @internal
 * @module
 */
import type { LostReport } from '../batch.js';
import type { AttachInfo } from '../session.js';
import { ChrootGuardError, type Refusal } from '../errors.js';
import type { ChrootEvent } from '../events.js';
import { toWallClock } from '../clock.js';
import { utf8SequenceLength } from '../utf8.js';

/** Exit codes of every chroot-guard command. */
export const EXIT = {
  /** Success; a command that runs until stopped (`watch`, `enforce`, `status --follow`, `agent`) stopped by SIGINT or SIGTERM. */
  OK: 0,
  /** A failure not listed below. */
  FAILURE: 1,
  /** Bad usage: unknown option, bad value; an invalid policy or agent config, a policy file another user could change. */
  USAGE: 2,
  /** The kernel allows no usable attach mode, or the requested one is unavailable. */
  UNSUPPORTED: 3,
  /** Missing privileges: needs root, or CAP_BPF and CAP_PERFMON. */
  NO_PERMISSION: 4,
  /** `demo`: an expected event was not seen. */
  MISMATCH: 5,
  /** `status`: no guard is pinned. */
  NOT_PINNED: 6,
  /** `replay`, `learn`: the recording cannot be read, or has lines that are not records (counted and reported; the rest was read). */
  BAD_RECORDING: 7,
  /** `replay --fail-on-deny`: the policy would deny at least one recorded call. */
  WOULD_DENY: 8,
} as const;

/** The help text's exit code section. */
export const EXIT_HELP = `
Exit codes:
  0  success; watch, enforce, status --follow or agent stopped by Ctrl-C (SIGINT) or SIGTERM
  1  failure (e.g. a program failed to load)
  2  usage error, an invalid policy or agent config file, or a policy file to load that a
     user other than root could change (UNSAFE_POLICY_FILE)
  3  unsupported kernel: the requested --mode, or the BPF LSM (enforce), is unavailable here
  4  missing privileges: run as root, or with CAP_BPF and CAP_PERFMON
  5  demo: an expected event was not seen
  6  status: no guard is pinned
  7  replay, learn: the recording cannot be read or has malformed lines (each named on stderr)
  8  replay --fail-on-deny: the policy would deny a recorded call`;

/** Writes one line to stderr, prefixed `chroot-guard: `. */
export function note(message: string): void {
  process.stderr.write(`chroot-guard: ${message}\n`);
}

/** The exit code for an error. */
export function exitCodeOf(err: unknown): number {
  if (!(err instanceof ChrootGuardError)) return EXIT.FAILURE;
  switch (err.code) {
    case 'EPERM':
      return EXIT.NO_PERMISSION;
    case 'UNSUPPORTED_KERNEL':
    case 'MODE_UNAVAILABLE':
      return EXIT.UNSUPPORTED;
    case 'INVALID_ARGUMENT':
    case 'INVALID_POLICY':
    case 'INVALID_CONFIG':
    case 'UNSAFE_POLICY_FILE':
      return EXIT.USAGE;
    case 'LSM_UNAVAILABLE':
      return EXIT.UNSUPPORTED;
    case 'INVALID_RECORDING':
      return EXIT.BAD_RECORDING;
    default:
      return EXIT.FAILURE;
  }
}

/** Prints an error (with refusals and the verifier log's tail) and returns its exit code. */
export function reportError(err: unknown): number {
  if (err instanceof ChrootGuardError) {
    note(`error: ${err.message}`);
    for (const r of err.refusals) note(`  ${describeRefusal(r)}`);
    if (err.verifierLog) {
      const tail = err.verifierLog.trimEnd().split('\n').slice(-20).join('\n');
      process.stderr.write(`--- verifier log (last 20 lines) ---\n${tail}\n`);
    }
  } else {
    note(`error: ${err instanceof Error ? err.message : String(err)}`);
  }
  return exitCodeOf(err);
}

/**
 * One refused mode: `fentry refused (EPERM): REASON`, and for a refusal
 * `auto` remembered instead of trying again (`Refusal.remembered`),
 * `fentry refused (EPERM, remembered from an earlier attempt this boot): REASON`.
 */
export function describeRefusal(r: Refusal): string {
  return `${r.mode} refused (${r.code}${r.remembered ? ', remembered from an earlier attempt this boot' : ''}): ${r.reason}`;
}

/** The attach line: which mode, and why better ones were refused. */
export function describeAttach(info: AttachInfo): string {
  const refused = info.refused.map(describeRefusal);
  const blind = info.blindSpots.map((r) =>
    r.code === 'COMPAT_OFF'
      ? `blind spot: 32-bit compat and x32 chroot calls are not seen (${r.reason})`
      : r.code === 'MISSES_UNCOUNTED'
        ? `blind spot: calls whose return ${r.program} misses are not counted (${r.reason})`
        : `blind spot: 32-bit compat chroot calls are not seen (${r.program} on ${r.target} refused, ${r.code}: ${r.reason})`,
  );
  return [`attached in ${info.mode} mode`, ...refused, ...blind].join('\n  ');
}

/** The warning for lost events and failed decisions. */
export function describeLost(l: LostReport): string {
  const parts = [];
  if (l.ringBufferFull) parts.push(`${l.ringBufferFull} events lost: ring buffer full (total ${l.total.ringBufferFull}); raise --ring-buffer-bytes`);
  if (l.pendingFull) parts.push(`${l.pendingFull} calls not traced: no in-flight storage (total ${l.total.pendingFull})`);
  if (l.kretprobeMissed) parts.push(`${l.kretprobeMissed} calls not reported: their return was missed, more in flight at once than the kretprobe's maxactive (total ${l.total.kretprobeMissed}); fentry and tracepoint modes have no such limit`);
  if (l.recursionMissed) parts.push(`${l.recursionMissed} calls not reported: the kernel skipped the fentry/fexit program, already running on that CPU (a preempted run: the kernel preempts fully) (total ${l.total.recursionMissed}); kprobe mode (--mode kprobe) runs with preemption off`);
  if (l.lsmErrors) parts.push(`${l.lsmErrors} decisions could not be made fully, decided by the policy's failMode or, without memory, denied (total ${l.total.lsmErrors})`);
  const byAction = (['deny', 'audit', 'allow'] as const)
    .map((a) => [a, l[`${a}Lost`], l.total[`${a}Lost`]] as const)
    .filter(([, n]) => n > 0)
    .map(([a, n, t]) => `${n} ${a} (total ${t})`);
  if (byAction.length) parts.push(`decisions not written, by action: ${byAction.join(', ')}`);
  return `warning: ${parts.join('; ')}`;
}

/**
 * The code points table output escapes (see {@link terminalSafe}), as
 * inclusive ranges: C0 controls (U+0000 to U+001F: newline, tab, ESC, …),
 * the backslash (so that an escape cannot be forged), DEL (U+007F), C1
 * controls (U+0080 to U+009F, e.g. U+009B, a CSI to terminals that take
 * 8-bit controls), and the format characters that break a line or reorder
 * what it shows (U+061C, U+200E, U+200F, U+2028 to U+202E, U+2066 to U+2069).
 */
export const UNSAFE_RANGES: ReadonlyArray<readonly [number, number]> = [
  [0x00, 0x1f],
  [0x5c, 0x5c],
  [0x7f, 0x9f],
  [0x61c, 0x61c],
  [0x200e, 0x200f],
  [0x2028, 0x202e],
  [0x2066, 0x2069],
];
const UNSAFE = UNSAFE_RANGES;
const unsafeCodePoint = (cp: number) => UNSAFE.some(([lo, hi]) => cp >= lo && cp <= hi);
const charClass = (ranges: typeof UNSAFE, flags: string) =>
  new RegExp(`[${ranges.map(([lo, hi]) => `\\u{${lo.toString(16)}}-\\u{${hi.toString(16)}}`).join('')}]`, flags);
const UNSAFE_IN_STRING = charClass(UNSAFE, 'u');
const utf8 = new TextDecoder('utf-8');

/**
 * A field that a caller controls (comm, path, resolved path, rule id) as
 * table output prints it: one line, no control or escape sequence. Every
 * byte of a character {@link unsafeCodePoint} names, and every byte that is
 * not part of well-formed UTF-8, is written `\xNN` (two lower-case hex
 * digits per byte: ESC is `\x1b`, U+009B is `\xc2\x9b`, an invalid byte
 * 0xff is `\xff`); a backslash is written `\\`; everything else as is. So
 * `\x` always starts an escape and the bytes can be recovered exactly.
 * Give the raw bytes where there are any (`pathBytes`); a string is taken as
 * its UTF-8 bytes. Every table printer of the CLI uses this; JSON output
 * does not (see {@link jsonWithBigInts}).
 */
export function terminalSafe(value: string | Uint8Array): string {
  let b: Uint8Array;
  if (typeof value === 'string') {
    if (!UNSAFE_IN_STRING.test(value)) return value;
    b = Buffer.from(value, 'utf8');
  } else {
    // Printable ASCII without a backslash, the common case, as is.
    if (value.every((x) => x >= 0x20 && x < 0x7f && x !== 0x5c)) return Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('latin1');
    b = value;
  }
  let out = '';
  let run = 0; // start of the bytes not yet written, all printable
  for (let i = 0; i < b.length; ) {
    const n = utf8SequenceLength(b, i);
    const b0 = b[i]!;
    const cp =
      // Four-byte characters (U+10000 and up) are all printable here.
      n === 1 ? b0 : n === 2 ? ((b0 & 0x1f) << 6) | (b[i + 1]! & 0x3f) : n === 3 ? ((b0 & 0x0f) << 12) | ((b[i + 1]! & 0x3f) << 6) | (b[i + 2]! & 0x3f) : n === 4 ? 0x10000 : -1;
    if (n !== 0 && !unsafeCodePoint(cp)) {
      i += n;
      continue;
    }
    out += utf8.decode(b.subarray(run, i));
    if (cp === 0x5c) out += '\\\\';
    else for (const x of b.subarray(i, i + Math.max(n, 1))) out += `\\x${x.toString(16).padStart(2, '0')}`;
    i += Math.max(n, 1);
    run = i;
  }
  return out + utf8.decode(b.subarray(run));
}

/**
 * The unsafe characters JSON.stringify leaves raw (it escapes C0 and the
 * backslash itself), as inclusive ranges. In JSON text they can only stand
 * inside strings, where \uXXXX reads back as the same character. The addon
 * writing `watch --json` escapes the same (`addonLines` in printer.ts).
 */
export const JSON_UNSAFE_RANGES = UNSAFE.filter(([lo]) => lo >= 0x7f);
const JSON_UNSAFE = charClass(JSON_UNSAFE_RANGES, 'gu');

const unicodeEscape = (c: string) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`;

// Strings that JSON writes as they are: printable ASCII but `"` and `\`.
const JSON_PLAIN = /^[\x20\x21\x23-\x5b\x5d-\x7e]*$/;

/**
 * `s` as a JSON string, escaped as {@link jsonWithBigInts} escapes it
 * (the same text, byte for byte); plain printable ASCII, the common case,
 * is only quoted.
 */
export function jsonString(s: string): string {
  return JSON_PLAIN.test(s) ? `"${s}"` : JSON.stringify(s).replace(JSON_UNSAFE, unicodeEscape);
}

/**
 * JSON with every bigint written as a JSON integer, exact to the last
 * digit. Characters JSON.stringify leaves raw but a terminal may act on
 * (DEL, C1 controls such as U+009B, and the format characters of
 * {@link terminalSafe}) are written as `\uXXXX` escapes, so a JSON line is
 * safe on a terminal too; a JSON parser reads the same strings. (C0
 * controls JSON.stringify escapes itself.)
 */
export function jsonWithBigInts(value: unknown): string {
  return JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? `\u0000${v}\u0000` : v))
    .replace(/"\\u0000(\d+)\\u0000"/g, '$1')
    .replace(JSON_UNSAFE, unicodeEscape);
}

const COLUMNS: ReadonlyArray<[string, number]> = [
  ['TIME', 12],
  ['PID', 7],
  ['COMM', 16],
  ['UID', 6],
  ['RESULT', 8],
];

function row(cells: readonly string[], last: string): string {
  // At least one space after each cell, also after one wider than its column.
  return cells.map((c, i) => `${c.padEnd(COLUMNS[i]?.[1] ?? 0)} `).join('') + last;
}

/** The table header line. */
export function tableHeader(): string {
  return row(
    COLUMNS.map(([name]) => name),
    'PATH → RESOLVED',
  );
}

/**
 * What goes before a resolved path in table output: `…` for a path cut
 * short, `[unreachable]` for one outside the caller's mount namespace.
 */
export function resolvedMark(e: Pick<ChrootEvent, 'resolvedPathTruncated' | 'resolvedPathUnreachable'>): string {
  return e.resolvedPathUnreachable ? '[unreachable]' : e.resolvedPathTruncated ? '…' : '';
}

/**
 * What goes after a resolved path in table output: the escape facts that
 * hold, `[ESCAPE]` (`escapesRoot`) and `[cwd-out]` (`cwdOutsideRoot`),
 * each with a `?` instead when the kernel could not tell; nothing for
 * false, or for a call without a new root.
 */
export function rootMarks(e: Pick<ChrootEvent, 'resolvedPath' | 'escapesRoot' | 'cwdOutsideRoot'>): string {
  if (e.resolvedPath === null) return '';
  const mark = (v: boolean | null, name: string) => (v === false ? '' : ` [${name}${v === null ? '?' : ''}]`);
  return mark(e.escapesRoot, 'ESCAPE') + mark(e.cwdOutsideRoot, 'cwd-out');
}

/**
 * What follows a table line of a call from a container: its runtime and
 * the first 12 digits of its id, as `docker ps` shortens them
 * (` [containerd 3f4e5a6b7c8d]`); nothing outside containers. Both come
 * from fixed lists and hex digits (`containerOf` in `ts/cgroup.ts`), so nothing here
 * needs escaping.
 */
export function containerMark(e: Pick<ChrootEvent, 'containerRuntime' | 'containerId'>): string {
  return e.containerId === null ? '' : ` [${e.containerRuntime} ${e.containerId.slice(0, 12)}]`;
}

/** One table line: local time, pid, comm, uid, result, path → resolved path and its {@link rootMarks}, then {@link containerMark} (caller-controlled fields through {@link terminalSafe}). */
export function tableLine(e: ChrootEvent): string {
  const t = toWallClock(e.ts);
  const time = `${t.toTimeString().slice(0, 8)}.${String(t.getMilliseconds()).padStart(3, '0')}`;
  const path = e.pathUnreadable ? '<unreadable>' : `${terminalSafe(e.pathBytes)}${e.pathTruncated ? '…' : ''}`;
  const resolved = e.resolvedPath === null ? '' : ` → ${resolvedMark(e)}${terminalSafe(e.resolvedPathBytes ?? e.resolvedPath)}${rootMarks(e)}`;
  return row([time, String(e.pid), terminalSafe(e.commBytes), String(e.uid), e.errno ?? 'ok'], path + resolved + containerMark(e));
}
