/**
 * Output of the CLI: event lines (table or JSON), errors with their remedy,
 * and the exit codes every command shares.
 * @internal
 * @module
 */
import type { AttachInfo, LostReport } from '../session.js';
import { ChrootWatchError } from '../errors.js';
import type { ChrootEvent } from '../events.js';
import { toWallClock } from '../clock.js';

/** Exit codes of every chroot-guard command. */
export const EXIT = {
  /** Success; `watch` stopped by SIGINT or SIGTERM. */
  OK: 0,
  /** A failure not listed below. */
  FAILURE: 1,
  /** Bad usage: unknown option, bad value. */
  USAGE: 2,
  /** The kernel allows no usable attach mode, or the requested one is unavailable. */
  UNSUPPORTED: 3,
  /** Missing privileges: needs root, or CAP_BPF and CAP_PERFMON. */
  NO_PERMISSION: 4,
  /** `demo`: an expected event was not seen. */
  MISMATCH: 5,
  /** `status`: no guard is pinned. */
  NOT_PINNED: 6,
} as const;

/** The help text's exit code section. */
export const EXIT_HELP = `
Exit codes:
  0  success; watch stopped by Ctrl-C (SIGINT) or SIGTERM
  1  failure (e.g. a program failed to load)
  2  usage error, or an invalid policy file
  3  unsupported kernel: the requested --mode, or the BPF LSM (enforce), is unavailable here
  4  missing privileges: run as root, or with CAP_BPF and CAP_PERFMON
  5  demo: an expected event was not seen
  6  status: no guard is pinned`;

/** Writes one line to stderr, prefixed `chroot-guard: `. */
export function note(message: string): void {
  process.stderr.write(`chroot-guard: ${message}\n`);
}

/** The exit code for an error. */
export function exitCodeOf(err: unknown): number {
  if (!(err instanceof ChrootWatchError)) return EXIT.FAILURE;
  switch (err.code) {
    case 'EPERM':
      return EXIT.NO_PERMISSION;
    case 'UNSUPPORTED_KERNEL':
    case 'MODE_UNAVAILABLE':
      return EXIT.UNSUPPORTED;
    case 'INVALID_ARGUMENT':
    case 'INVALID_POLICY':
      return EXIT.USAGE;
    case 'LSM_UNAVAILABLE':
      return EXIT.UNSUPPORTED;
    default:
      return EXIT.FAILURE;
  }
}

/** Prints an error (with refusals and the verifier log's tail) and returns its exit code. */
export function reportError(err: unknown): number {
  if (err instanceof ChrootWatchError) {
    note(`error: ${err.message}`);
    for (const r of err.refusals) note(`  ${r.mode} refused (${r.code}): ${r.reason}`);
    if (err.verifierLog) {
      const tail = err.verifierLog.trimEnd().split('\n').slice(-20).join('\n');
      process.stderr.write(`--- verifier log (last 20 lines) ---\n${tail}\n`);
    }
  } else {
    note(`error: ${err instanceof Error ? err.message : String(err)}`);
  }
  return exitCodeOf(err);
}

/** The attach line: which mode, and why better ones were refused. */
export function describeAttach(info: AttachInfo): string {
  const refused = info.refused.map((r) => `${r.mode} refused (${r.code}): ${r.reason}`);
  return [`attached in ${info.mode} mode`, ...refused].join('\n  ');
}

/** The warning for lost events and failed decisions. */
export function describeLost(l: LostReport): string {
  const parts = [];
  if (l.ringBufferFull) parts.push(`${l.ringBufferFull} events lost: ring buffer full (total ${l.total.ringBufferFull}); raise --ring-buffer-bytes`);
  if (l.pendingFull) parts.push(`${l.pendingFull} calls not traced: in-flight map full (total ${l.total.pendingFull})`);
  if (l.lsmErrors) parts.push(`${l.lsmErrors} decisions could not be made fully, the policy's failMode applied (total ${l.total.lsmErrors})`);
  const byAction = (['deny', 'audit', 'allow'] as const)
    .map((a) => [a, l[`${a}Lost`], l.total[`${a}Lost`]] as const)
    .filter(([, n]) => n > 0)
    .map(([a, n, t]) => `${n} ${a} (total ${t})`);
  if (byAction.length) parts.push(`decisions not written, by action: ${byAction.join(', ')}`);
  return `warning: ${parts.join('; ')}`;
}

/** JSON with every bigint written as a JSON integer, exact to the last digit. */
export function jsonWithBigInts(value: unknown): string {
  return JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? `\u0000${v}\u0000` : v)).replace(/"\\u0000(\d+)\\u0000"/g, '$1');
}

/** The JSON form of an event: every field, `ts` and the other u64s as JSON integers. */
export function eventJson(e: ChrootEvent): string {
  const obj = {
    ts: e.ts,
    enterTs: e.enterTs,
    pid: e.pid,
    tid: e.tid,
    ppid: e.ppid,
    uid: e.uid,
    gid: e.gid,
    euid: e.euid,
    egid: e.egid,
    comm: e.comm,
    cgroupId: e.cgroupId,
    mntNs: e.mntNs,
    pidNs: e.pidNs,
    userNs: e.userNs,
    exeDev: e.exeDev,
    exeIno: e.exeIno,
    exeUnknown: e.exeUnknown,
    path: e.path,
    pathBase64: e.pathBytes.toString('base64'),
    pathTruncated: e.pathTruncated,
    resolvedPath: e.resolvedPath,
    resolvedPathTruncated: e.resolvedPathTruncated,
    resolvedPathUnreachable: e.resolvedPathUnreachable,
    ret: e.ret,
    errno: e.errno,
    lsmRet: e.lsmRet,
    probe: e.probe,
  };
  return jsonWithBigInts(obj);
}

const COLUMNS: ReadonlyArray<[string, number]> = [
  ['TIME', 12],
  ['PID', 7],
  ['COMM', 16],
  ['UID', 6],
  ['RESULT', 8],
];

function row(cells: readonly string[], last: string): string {
  return cells.map((c, i) => c.padEnd((COLUMNS[i]?.[1] ?? 0) + 1)).join('') + last;
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

/** One table line: local time, pid, comm, uid, result, path → resolved path. */
export function tableLine(e: ChrootEvent): string {
  const t = toWallClock(e.ts);
  const time = `${t.toTimeString().slice(0, 8)}.${String(t.getMilliseconds()).padStart(3, '0')}`;
  const path = e.pathUnreadable ? '<unreadable>' : `${e.path}${e.pathTruncated ? '…' : ''}`;
  const resolved = e.resolvedPath === null ? '' : ` → ${resolvedMark(e)}${e.resolvedPath}`;
  return row([time, String(e.pid), e.comm, String(e.uid), e.errno ?? 'ok'], path + resolved);
}

/** Writes event lines to stdout in the chosen format; ends quietly on EPIPE. */
export class EventPrinter {
  private headerDone = false;
  count = 0;

  constructor(private readonly json: boolean) {}

  /** Prints the table header once (nothing in JSON mode). */
  header(): void {
    if (this.json || this.headerDone) return;
    process.stdout.write(tableHeader() + '\n');
    this.headerDone = true;
  }

  print(e: ChrootEvent): void {
    this.count++;
    if (this.json) {
      process.stdout.write(eventJson(e) + '\n');
      return;
    }
    this.header();
    process.stdout.write(tableLine(e) + '\n');
  }
}
