/**
 * `chroot-guard ps`: the chrooted processes now, as a tree (children under
 * their parent, by ppid) or one JSON `task` record per line.
 * @internal
 * @module
 */
import { chrootedTasks, type ChrootedTask, type PsResult, type PsSource } from '../ps.js';
import { writeStdout } from './stdout.js';
import { EXIT, containerMark, jsonWithBigInts, note, reportError, terminalSafe } from './output.js';

/** Options of the `ps` command. */
export interface PsFlags {
  readonly json?: boolean;
  readonly pid?: number;
  readonly uid?: number;
  readonly comm?: string;
  readonly source: 'auto' | PsSource;
}

/**
 * A `task` record of `ps --json` (events.schema.json, `task`): every field
 * of {@link ChrootedTask}, each byte field as base64 in place of its Buffer
 * (`rootBytes` → `rootBase64`), and the source it was read from.
 */
export function taskRecord(t: ChrootedTask, source: PsSource): string {
  const b64 = (b: Buffer | null) => (b === null ? null : b.toString('base64'));
  const { commBytes, rootBytes, cwdBytes, exeBytes, ...rest } = t;
  return jsonWithBigInts({
    type: 'task',
    source,
    ...rest,
    commBase64: b64(commBytes),
    rootBase64: b64(rootBytes),
    cwdBase64: b64(cwdBytes),
    exeBase64: b64(exeBytes),
  });
}

/** The table's lines: a header, then each task under its parent, two spaces deeper per generation, its container last ({@link containerMark}). */
export function renderTree(tasks: readonly ChrootedTask[]): string[] {
  const byPid = new Map(tasks.map((t) => [t.pid, t]));
  const children = new Map<number, ChrootedTask[]>();
  const roots: ChrootedTask[] = [];
  for (const t of tasks) {
    if (t.ppid !== t.pid && byPid.has(t.ppid)) children.set(t.ppid, [...(children.get(t.ppid) ?? []), t]);
    else roots.push(t);
  }
  const lines = [`${'PID'.padEnd(8)}${'PPID'.padEnd(8)}${'UID'.padEnd(7)}COMM → ROOT  (CWD, EXE)  [CONTAINER]`];
  const walk = (t: ChrootedTask, depth: number) => {
    const root = terminalSafe(t.rootBytes) + (t.rootUnreachable ? ' (unreachable)' : t.rootTruncated ? ' (truncated)' : '');
    const cwd = t.cwdBytes === null ? '?' : terminalSafe(t.cwdBytes) + (t.cwdOutsideRoot ? ' (outside root)' : '');
    const exe = t.exeBytes === null ? '-' : terminalSafe(t.exeBytes) + (t.exeDeleted ? ' (deleted)' : '');
    lines.push(`${String(t.pid).padEnd(8)}${String(t.ppid).padEnd(8)}${String(t.uid).padEnd(7)}${'  '.repeat(depth)}${terminalSafe(t.commBytes)} → ${root}  (cwd ${cwd}, exe ${exe})${containerMark(t)}`);
    for (const c of children.get(t.pid) ?? []) walk(c, depth + 1);
  };
  for (const t of roots) walk(t, 0);
  return lines;
}

function matches(t: ChrootedTask, f: PsFlags): boolean {
  return (f.pid === undefined || t.pid === f.pid) && (f.uid === undefined || t.uid === f.uid) && (f.comm === undefined || t.comm === f.comm);
}

/** Runs `ps`; resolves with the exit code. */
export async function psCommand(flags: PsFlags): Promise<number> {
  let r: PsResult;
  try {
    r = await chrootedTasks({ source: flags.source });
  } catch (err) {
    return reportError(err);
  }
  if (r.iteratorRefusal) {
    note(`the kernel refused the task iterator (${r.iteratorRefusal.code}): ${r.iteratorRefusal.reason}; read /proc instead`);
  }
  const tasks = r.tasks.filter((t) => matches(t, flags));
  if (flags.json) {
    writeStdout(tasks.map((t) => taskRecord(t, r.source) + '\n').join(''));
  } else if (tasks.length === 0) {
    note(`no chrooted process${flags.pid ?? flags.uid ?? flags.comm ? ' matches' : ''} (read from ${r.source === 'iterator' ? 'the task iterator' : '/proc'})`);
  } else {
    writeStdout(renderTree(tasks).join('\n') + '\n');
  }
  return EXIT.OK;
}
