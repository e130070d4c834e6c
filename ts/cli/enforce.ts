/**
 * `chroot-guard enforce` and `chroot-guard check`.
 * @internal
 * @module
 */
import { chrootGuard, type ChrootDecision } from '../guard.js';
import { decisionOf } from '../decision.js';
import { ChrootWatchError } from '../errors.js';
import type { ChrootEvent } from '../events.js';
import { asAudit, evaluatePolicy, loadPolicy, PolicyError, type Policy } from '../policy.js';
import { chrootWatch } from '../watch.js';
import { followPinnedGuard, pinnedGuard, unloadPinnedGuard, updatePinnedGuard, type PinnedGuardStatus } from '../pinned.js';
import { toWallClock } from '../clock.js';
import { EXIT, describeLost, jsonWithBigInts, note, reportError, terminalSafe } from './output.js';

/** The JSON form of a decision (u64s as JSON integers). */
export function decisionJson(d: ChrootDecision): string {
  const { pathBytes, resolvedPathBytes, ...rest } = d;
  void resolvedPathBytes;
  return jsonWithBigInts({ ...rest, pathBase64: pathBytes.toString('base64') });
}

const HEADER = `${'TIME'.padEnd(13)}${'PID'.padEnd(8)}${'COMM'.padEnd(17)}${'UID'.padEnd(7)}${'DECISION'.padEnd(11)}${'RULE'.padEnd(24)}RESOLVED`;

/** One table line: time, pid, comm, uid, decision, rule, resolved path (caller-controlled fields through {@link terminalSafe}). */
export function decisionLine(d: ChrootDecision): string {
  const t = toWallClock(d.ts);
  const time = `${t.toTimeString().slice(0, 8)}.${String(t.getMilliseconds()).padStart(3, '0')}`;
  const decision = d.denied ? 'DENIED' : d.wouldDeny ? 'would-deny' : d.action;
  const resolved = d.resolvedPath === null ? '' : terminalSafe(d.resolvedPathBytes ?? d.resolvedPath);
  // At least one space after each cell, also after one wider than its column.
  const cell = (s: string, width: number) => `${s.padEnd(width - 1)} `;
  return `${cell(time, 13)}${cell(String(d.pid), 8)}${cell(terminalSafe(d.comm), 17)}${cell(String(d.uid), 7)}${cell(decision, 11)}${cell(d.ruleId === null ? '(default)' : terminalSafe(d.ruleId), 24)}${resolved}${d.source === 'watch' ? '  [from watch]' : ''}`;
}

function printer(json: boolean) {
  let header = false;
  return (d: ChrootDecision) => {
    if (json) return void process.stdout.write(decisionJson(d) + '\n');
    if (!header) {
      process.stdout.write(HEADER + '\n');
      header = true;
    }
    process.stdout.write(decisionLine(d) + '\n');
  };
}

/**
 * A decision computed in JavaScript from a watch event (the audit fallback);
 * null for a call that failed before `security_path_chroot` (path lookup,
 * permission or CAP_SYS_CHROOT checks), which no LSM policy would have seen.
 */
function fromWatch(policy: Policy, e: ChrootEvent): ChrootDecision | null {
  if (e.ret !== 0 && e.lsmRet === null) return null;
  const v = evaluatePolicy(policy, e);
  return decisionOf(e, { action: v.action, ruleId: v.ruleId, denied: false, policyMode: 'audit', generation: 0, source: 'watch' });
}

/** Waits for SIGINT/SIGTERM. */
function untilSignal(): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      process.off('SIGINT', done);
      process.off('SIGTERM', done);
      resolve();
    };
    process.on('SIGINT', done);
    process.on('SIGTERM', done);
  });
}

/** Flags of `enforce`. */
interface EnforceFlags {
  policy: string;
  audit?: boolean;
  json?: boolean;
  ringBufferBytes?: number;
  pin?: boolean;
  pinDir: string;
}

/** `enforce --policy FILE [--audit] [--json] [--pin]`: runs until stopped, or pins and returns. */
export async function enforceCommand(flags: EnforceFlags): Promise<number> {
  let policy: Policy;
  try {
    policy = loadPolicy(flags.policy);
  } catch (err) {
    return reportError(err);
  }
  if (flags.audit) policy = asAudit(policy);
  if (flags.pin) return pinCommand(policy, flags);
  const print = printer(flags.json === true);
  const guard = chrootGuard(policy, {
    ...(flags.ringBufferBytes !== undefined ? { ringBufferBytes: flags.ringBufferBytes } : {}),
    onLost: (l) => note(describeLost(l)),
  });
  const sub = guard.decisions$.subscribe({ next: print, error: () => {} });
  try {
    const info = await guard.ready;
    note(`${policy.mode === 'enforce' ? 'enforcing' : 'auditing'} ${flags.policy} (generation ${info.generation}, ${info.compiledRules} compiled rules) with lsm/path_chroot; Ctrl-C to stop`);
  } catch (err) {
    sub.unsubscribe();
    guard.stop();
    if (!(err instanceof ChrootWatchError && err.code === 'LSM_UNAVAILABLE' && flags.audit)) return reportError(err);
    return auditFromWatch(policy, flags, err);
  }
  await untilSignal();
  sub.unsubscribe();
  const s = guard.stats();
  guard.stop();
  note(
    `stopped: ${s.decisions} decision${s.decisions === 1 ? '' : 's'}${s.ringBufferFull ? `, ${s.ringBufferFull} lost` : ''}${s.lsmErrors ? `, ${s.lsmErrors} made with the default action after an error` : ''}; chroot(2) is no longer checked`,
  );
  return EXIT.OK;
}

/** `enforce --pin`: pins a new guard, or updates the pinned one atomically, and returns. */
async function pinCommand(policy: Policy, flags: EnforceFlags): Promise<number> {
  const dir = flags.pinDir;
  const what = `${policy.mode === 'enforce' ? 'enforcing' : 'auditing'} ${flags.policy}`;
  try {
    if (pinnedGuard({ dir })) {
      const info = updatePinnedGuard(policy, { dir });
      note(`updated the guard pinned at ${dir}: now ${what} (generation ${info.generation}, ${info.compiledRules} compiled rules)`);
    } else {
      const guard = chrootGuard(policy, flags.ringBufferBytes !== undefined ? { ringBufferBytes: flags.ringBufferBytes } : {});
      guard.decisions$.subscribe({ error: () => {} });
      try {
        await guard.ready;
        const s = await guard.pin({ dir });
        note(`pinned at ${dir}: ${what} (generation ${s.generation}, ${s.ruleIds.length} compiled rules) with lsm/path_chroot`);
      } finally {
        guard.stop();
      }
      note('chroot(2) stays checked after this process exits; see it with `chroot-guard status`, its decisions with `chroot-guard status --follow`, remove it with `chroot-guard unload`');
    }
  } catch (err) {
    return reportError(err);
  }
  if (flags.json) process.stdout.write(jsonWithBigInts(pinnedGuard({ dir })) + '\n');
  return EXIT.OK;
}

/** The guard pinned at `dir`, or null; on error, the exit code after reporting it. */
function readPinned(dir: string): PinnedGuardStatus | null | number {
  try {
    return pinnedGuard({ dir });
  } catch (err) {
    return reportError(err);
  }
}

/** `status`: the pinned guard, if any. */
export function statusCommand(flags: { json?: boolean; pinDir: string }): number {
  const dir = flags.pinDir;
  const s = readPinned(dir);
  if (typeof s === 'number') return s;
  if (flags.json) {
    process.stdout.write(JSON.stringify(s ? { pinned: true, ...s } : { pinned: false, dir }, null, 2) + '\n');
  } else if (!s) {
    process.stdout.write(`no guard is pinned at ${dir}\n`);
  } else {
    const rules = [...new Set(s.ruleIds)].map(terminalSafe);
    process.stdout.write(
      [
        `guard pinned at ${s.dir}`,
        `  policy       ${s.mode}, default ${s.defaultAction}, generation ${s.generation}`,
        `  rules        ${rules.length ? rules.join(', ') : '(none)'} (${s.ruleIds.length} compiled)`,
        `  program      lsm/path_chroot, program id ${s.programId}, link id ${s.linkId}`,
        `  undelivered  ${s.ringBufferFull} decision events (ring buffer full while nobody followed: see status --follow)`,
        `  errors       ${s.lsmErrors} decisions made with the default action after an internal error`,
      ].join('\n') + '\n',
    );
  }
  return s ? EXIT.OK : EXIT.NOT_PINNED;
}

/** `status --follow`: the pinned guard's decisions until SIGINT/SIGTERM. */
export async function followCommand(flags: { json?: boolean; pinDir: string }): Promise<number> {
  const dir = flags.pinDir;
  const s = readPinned(dir);
  if (typeof s === 'number') return s;
  if (!s) {
    note(`no guard is pinned at ${dir}; pin one with \`chroot-guard enforce --pin\``);
    return EXIT.NOT_PINNED;
  }
  const print = printer(flags.json === true);
  let failed: unknown;
  let count = 0;
  await new Promise<void>((resolve) => {
    const sub = followPinnedGuard({ dir, onLost: (l) => note(describeLost(l)) }).subscribe({
      next: (d) => {
        count++;
        print(d);
      },
      error: (err: unknown) => {
        failed = err;
        resolve();
      },
    });
    if (failed) return;
    note(`following the guard pinned at ${dir} (${s.mode}, generation ${s.generation}); Ctrl-C to stop`);
    void untilSignal().then(() => {
      sub.unsubscribe();
      resolve();
    });
  });
  if (failed) return reportError(failed);
  note(`stopped following: ${count} decision${count === 1 ? '' : 's'}; the guard stays pinned`);
  return EXIT.OK;
}

/** `unload`: removes the pinned guard; succeeds when there is none. */
export function unloadCommand(flags: { json?: boolean; pinDir: string }): number {
  const dir = flags.pinDir;
  let removed: boolean;
  try {
    removed = unloadPinnedGuard({ dir });
  } catch (err) {
    return reportError(err);
  }
  if (flags.json) process.stdout.write(JSON.stringify({ dir, removed }) + '\n');
  else note(removed ? `removed the guard pinned at ${dir}: chroot(2) is no longer checked by it` : `no guard is pinned at ${dir}; nothing to do`);
  return EXIT.OK;
}

/** Where the BPF LSM cannot run: would-be decisions from the watch probes, after the fact. */
async function auditFromWatch(policy: Policy, flags: { policy: string; json?: boolean }, why: ChrootWatchError): Promise<number> {
  note(`the BPF LSM is unavailable (${why.message.split(' (LSM_UNAVAILABLE)')[0]})`);
  note('falling back to audit from the watch probes: decisions are computed after each call returns, nothing is blocked, resolved paths of failed calls are unknown in tracepoint mode, and exe conditions cannot be evaluated');
  const print = printer(flags.json === true);
  let failed: unknown;
  const stopped = new Promise<void>((resolve) => {
    const sub = chrootWatch({
      onAttach: (info) => note(`auditing ${flags.policy} from the ${info.mode} probes; Ctrl-C to stop`),
      onLost: (l) => note(describeLost(l)),
    }).subscribe({
      next: (e) => {
        const d = fromWatch(policy, e);
        if (d) print(d);
      },
      error: (err: unknown) => {
        failed = err;
        resolve();
      },
    });
    void untilSignal().then(() => {
      sub.unsubscribe();
      resolve();
    });
  });
  await stopped;
  return failed ? reportError(failed) : EXIT.OK;
}

/** `check FILE...`: validates without root. */
export function checkCommand(files: string[], flags: { json?: boolean }): number {
  let bad = 0;
  const results = files.map((file) => {
    try {
      const p = loadPolicy(file);
      if (!flags.json) process.stdout.write(`${file}: ok (${p.mode}, ${p.rules.length} rules, default ${p.default ?? 'allow'})\n`);
      return { file, ok: true, problems: [] };
    } catch (err) {
      if (!(err instanceof PolicyError)) throw err;
      bad++;
      if (!flags.json) for (const line of err.message.replace(/ \(INVALID_POLICY\).*$/s, '').split('\n')) process.stderr.write(`${line}\n`);
      return { file, ok: false, problems: err.problems };
    }
  });
  if (flags.json) process.stdout.write(JSON.stringify(results, null, 2) + '\n');
  return bad ? EXIT.USAGE : EXIT.OK;
}
