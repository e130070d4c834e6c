/**
 * `chroot-guard enforce`, and the pinned guard's `status`, `follow`, `unload`.
 * @internal
 * @module
 */
import { chrootGuard, type ChrootDecision } from '../guard.js';
import { decisionOf } from '../decision.js';
import { ChrootGuardError } from '../errors.js';
import type { ChrootEvent } from '../events.js';
import { evaluatePolicy, INITIAL_USER_NS, policyContext, type PolicyContext } from '../policy/evaluate.js';
import { asAudit, type Policy } from '../policy/types.js';
import { loadPolicy, policyWarnings } from '../policy/validate.js';
import { chrootWatch } from '../watch.js';
import { followPinnedGuard, pinLeftovers, pinnedGuard, unloadPinnedGuard, updatePinnedGuard, type PinnedGuardStatus, type PinnedGuardUnload } from '../pinned.js';
import { EXIT, describeLost, jsonWithBigInts, note, reportError, terminalSafe } from './output.js';
import { DecisionPrinter } from './printer.js';
import { onStdoutGone, stdoutFlow } from './stdout.js';
import type { LostReport } from '../batch.js';
import { lsmDecides } from '../recording.js';

/**
 * A decision computed in JavaScript from a watch event (the audit fallback);
 * null for a call that failed before `security_path_chroot` (path lookup,
 * permission or CAP_SYS_CHROOT checks), which no LSM policy would have seen.
 */
function fromWatch(policy: Policy, context: PolicyContext, e: ChrootEvent): ChrootDecision | null {
  if (!lsmDecides(e)) return null;
  const v = evaluatePolicy(policy, e, context);
  return decisionOf(e, {
    action: v.action,
    ruleId: v.ruleId,
    reason: v.ruleId === null ? 'default' : 'rule',
    error: null,
    initialNamespaces: e.userNs === INITIAL_USER_NS && e.mntNs === context.initialMntNs,
    denied: false,
    policyMode: 'audit',
    generation: 0,
    source: 'watch',
  });
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

/**
 * For commands that only print: waits for SIGINT/SIGTERM or for stdout to
 * end; resolves with stdout's error unless it was EPIPE (a reader that left).
 */
function untilSignalOrStdoutGone(): Promise<NodeJS.ErrnoException | undefined> {
  return new Promise((resolve) => {
    let stopListening = () => {};
    const done = (err?: NodeJS.ErrnoException) => {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      stopListening();
      resolve(err && err.code !== 'EPIPE' ? err : undefined);
    };
    const onSignal = () => done();
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    stopListening = onStdoutGone(done);
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

/**
 * `enforce --policy FILE [--audit] [--json] [--pin]`: runs until stopped, or
 * pins and returns. The file is read as `loadPolicy(file, { trusted: true })`:
 * one another user could change is refused (`UNSAFE_POLICY_FILE`, exit 2)
 * before the BPF LSM is tried.
 */
export async function enforceCommand(flags: EnforceFlags): Promise<number> {
  let policy: Policy;
  try {
    // Before anything reaches the kernel (or asks whether it can): a
    // policy another user could change is refused on any host.
    policy = loadPolicy(flags.policy, { trusted: true });
  } catch (err) {
    return reportError(err);
  }
  for (const w of policyWarnings(policy)) note(`warning: ${flags.policy}: ${w.pointer}: ${w.message}`);
  if (flags.audit) policy = asAudit(policy);
  if (flags.pin) return pinCommand(policy, flags);
  const printer = new DecisionPrinter(flags.json === true);
  const guard = chrootGuard(policy, {
    ...(flags.ringBufferBytes !== undefined ? { ringBufferBytes: flags.ringBufferBytes } : {}),
    flow: stdoutFlow,
    onLost: (l) => {
      printer.lost(l);
      note(describeLost(l));
    },
  });
  const sub = guard.decisions$.subscribe({ next: (d) => printer.print(d), error: () => {} });
  try {
    const info = await guard.ready;
    printer.attached({ mode: 'lsm', generation: info.generation, policyMode: policy.mode });
    note(`${policy.mode === 'enforce' ? 'enforcing' : 'auditing'} ${flags.policy} (generation ${info.generation}, ${info.compiledRules} compiled rules) with lsm/path_chroot; Ctrl-C to stop`);
  } catch (err) {
    sub.unsubscribe();
    guard.stop();
    if (!(err instanceof ChrootGuardError && err.code === 'LSM_UNAVAILABLE' && flags.audit)) return reportError(err);
    return auditFromWatch(policy, flags, err);
  }
  // The guard outlives its log: a reader that went away must not lift it.
  const stopListening = onStdoutGone((err) =>
    note(`stdout ended (${err.code ?? err.message}): decisions are no longer printed; ${policy.mode === 'enforce' ? 'still enforcing' : 'still auditing'} until SIGINT/SIGTERM`),
  );
  await untilSignal();
  stopListening();
  sub.unsubscribe();
  printer.finish();
  const s = guard.stats();
  guard.stop();
  note(
    `stopped: ${s.decisions} decision${s.decisions === 1 ? '' : 's'}${s.ringBufferFull ? `, ${s.ringBufferFull} lost` : ''}${s.lsmErrors ? `, ${s.lsmErrors} made after an error (failMode, or a deny without memory)` : ''}; chroot(2) is no longer checked`,
  );
  return EXIT.OK;
}

/**
 * Whether a failed `pin()` lost to another pinner: a guard is pinned at
 * `dir` now (whatever the failure, that guard is the one to update).
 */
function pinnedMeanwhile(err: unknown, dir: string): boolean {
  if (!(err instanceof ChrootGuardError) || err.code !== 'PIN_FAILED') return false;
  try {
    return pinnedGuard({ dir }) !== null;
  } catch {
    return false;
  }
}

/** What {@link pinOrAdopt} did, and the policy now in force. */
export interface PinOutcome {
  /**
   * `pinned`: nothing was pinned, a new guard is; `adopted`: the guard
   * pinned already took the policy; `raced`: another process pinned one at
   * the same time, and it took the policy.
   */
  readonly how: 'pinned' | 'adopted' | 'raced';
  /** Generation of the policy in force. */
  readonly generation: number;
  /** Its compiled rules. */
  readonly compiledRules: number;
}

/**
 * Puts `policy` in force in the guard pinned at `dir`: updates a pinned
 * guard atomically, or loads and pins a new one. The one way `enforce
 * --pin` and the agent's guard pin, so that neither ever loads a second
 * guard beside a pinned one.
 *
 * Two at once may both find nothing pinned and each load a guard; the
 * pins of one appear first (they are renamed into place whole), and the
 * other's `pin()` fails with PIN_FAILED. The loser then stops its own guard
 * and updates the winner's, so both succeed and one guard stays, with the
 * later policy in force (generation 2). This is the command's choice, not
 * `guard.pin()`'s: a library caller holding a running guard decides itself
 * whether to give it up.
 *
 * A new guard's own handle reads its decisions until it is stopped here,
 * right after pinning: those go to `onDecision`; later ones wait in the
 * pinned ring buffer for {@link followPinnedGuard}.
 * @throws As `chrootGuard()`, `guard.pin()` and `updatePinnedGuard()`.
 */
export async function pinOrAdopt(policy: Policy, options: { dir: string; ringBufferBytes?: number; onDecision?: (d: ChrootDecision) => void }): Promise<PinOutcome> {
  const { dir } = options;
  const update = (how: 'adopted' | 'raced'): PinOutcome => ({ how, ...updatePinnedGuard(policy, { dir }) });
  if (pinnedGuard({ dir })) return update('adopted');
  const guard = chrootGuard(policy, options.ringBufferBytes !== undefined ? { ringBufferBytes: options.ringBufferBytes } : {});
  guard.decisions$.subscribe({ next: (d) => options.onDecision?.(d), error: () => {} });
  let pinned: PinnedGuardStatus | undefined;
  try {
    await guard.ready;
    pinned = await guard.pin({ dir }).catch((err: unknown) => {
      if (pinnedMeanwhile(err, dir)) return undefined;
      throw err;
    });
  } finally {
    guard.stop();
  }
  return pinned ? { how: 'pinned', generation: pinned.generation, compiledRules: pinned.ruleIds.length } : update('raced');
}

/** `enforce --pin`: pins a new guard, or updates the pinned one atomically ({@link pinOrAdopt}), and returns. */
async function pinCommand(policy: Policy, flags: EnforceFlags): Promise<number> {
  const dir = flags.pinDir;
  const what = `${policy.mode === 'enforce' ? 'enforcing' : 'auditing'} ${flags.policy}`;
  try {
    const r = await pinOrAdopt(policy, { dir, ...(flags.ringBufferBytes !== undefined ? { ringBufferBytes: flags.ringBufferBytes } : {}) });
    const counts = `(generation ${r.generation}, ${r.compiledRules} compiled rules)`;
    if (r.how === 'pinned') {
      note(`pinned at ${dir}: ${what} ${counts} with lsm/path_chroot`);
      note('chroot(2) stays checked after this process exits; see it with `chroot-guard status`, its decisions with `chroot-guard status --follow`, remove it with `chroot-guard unload`');
    } else {
      if (r.how === 'raced') note(`another process pinned a guard at ${dir} at the same time; updating it instead`);
      note(`updated the guard pinned at ${dir}: now ${what} ${counts}`);
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

/** `status`: the pinned guard, if any, and what unfinished pins left beside it. */
export function statusCommand(flags: { json?: boolean; pinDir: string }): number {
  const dir = flags.pinDir;
  const s = readPinned(dir);
  if (typeof s === 'number') return s;
  let leftovers: string[];
  try {
    leftovers = pinLeftovers({ dir });
  } catch (err) {
    return reportError(err);
  }
  if (flags.json) {
    process.stdout.write(JSON.stringify(s ? { pinned: true, ...s, leftovers } : { pinned: false, dir, leftovers }, null, 2) + '\n');
  } else {
    const rules = s ? [...new Set(s.ruleIds)].map(terminalSafe) : [];
    const lines = s
      ? [
          `guard pinned at ${s.dir}`,
          `  policy       ${s.mode}, default ${s.defaultAction}, generation ${s.generation}`,
          `  rules        ${rules.length ? rules.join(', ') : '(none)'} (${s.ruleIds.length} compiled)`,
          `  program      lsm/path_chroot, program id ${s.programId}, link id ${s.linkId}`,
          `  undelivered  ${s.ringBufferFull} decision events (ring buffer full while nobody followed: see status --follow)`,
          `  errors       ${s.lsmErrors} decisions made after an internal error or a torn read: by the policy's failMode, a deny without memory`,
        ]
      : [`no guard is pinned at ${dir}`];
    if (leftovers.length) lines.push(`  leftovers    ${leftovers.join(', ')} (left by a pin that did not finish; remove with \`chroot-guard unload\`)`);
    process.stdout.write(lines.join('\n') + '\n');
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
  const printer = new DecisionPrinter(flags.json === true);
  printer.attached({ mode: 'lsm', generation: s.generation, policyMode: s.mode });
  let failed: unknown;
  let count = 0;
  await new Promise<void>((resolve) => {
    const onLost = (l: LostReport) => {
      printer.lost(l);
      note(describeLost(l));
    };
    const sub = followPinnedGuard({ dir, onLost, flow: stdoutFlow }).subscribe({
      next: (d) => {
        count++;
        printer.print(d);
      },
      error: (err: unknown) => {
        failed = err;
        resolve();
      },
    });
    if (failed) return;
    note(`following the guard pinned at ${dir} (${s.mode}, generation ${s.generation}); Ctrl-C to stop`);
    // Nothing left to show once stdout's reader is gone (`| head`): stop, the guard stays pinned.
    void untilSignalOrStdoutGone().then((err) => {
      if (err) failed = err;
      sub.unsubscribe();
      resolve();
    });
  });
  printer.finish();
  if (failed) return reportError(failed);
  note(`stopped following: ${count} decision${count === 1 ? '' : 's'}; the guard stays pinned`);
  return EXIT.OK;
}

/** `unload`: removes the pinned guard and the leftovers beside it; succeeds when there is none. */
export function unloadCommand(flags: { json?: boolean; pinDir: string }): number {
  const dir = flags.pinDir;
  let r: PinnedGuardUnload;
  try {
    r = unloadPinnedGuard({ dir });
  } catch (err) {
    return reportError(err);
  }
  if (flags.json) {
    process.stdout.write(JSON.stringify({ dir, ...r }) + '\n');
    return EXIT.OK;
  }
  const leftovers = r.leftoversRemoved.length + r.leftoversKept.length;
  if (r.removed) note(`removed the guard pinned at ${dir}: chroot(2) is no longer checked by it`);
  else note(`no guard is pinned at ${dir}${leftovers ? '' : '; nothing to do'}`);
  if (r.kept) note(`kept the directory ${dir}: ${r.kept}`);
  for (const d of r.leftoversRemoved) note(`removed ${d}, left by a pin that did not finish`);
  for (const k of r.leftoversKept) note(`kept ${k.dir}: ${k.reason}`);
  return EXIT.OK;
}

/** Where the BPF LSM cannot run: would-be decisions from the watch probes, after the fact. */
async function auditFromWatch(policy: Policy, flags: { policy: string; json?: boolean }, why: ChrootGuardError): Promise<number> {
  note(`the BPF LSM is unavailable (${why.message.split(' (LSM_UNAVAILABLE)')[0]})`);
  let context: PolicyContext;
  try {
    context = policyContext(policy);
  } catch (err) {
    return reportError(err);
  }
  note('falling back to audit from the watch probes: decisions are computed after each call returns, nothing is blocked, and resolved paths of failed calls are unknown in tracepoint mode');
  const printer = new DecisionPrinter(flags.json === true);
  let failed: unknown;
  const stopped = new Promise<void>((resolve) => {
    const sub = chrootWatch({
      flow: stdoutFlow,
      onAttach: (info) => {
        note(`auditing ${flags.policy} from the ${info.mode} probes; Ctrl-C to stop`);
        printer.attached({ mode: info.mode, refused: info.refused, blindSpots: info.blindSpots, policyMode: 'audit' });
      },
      onLost: (l) => {
        printer.lost(l);
        note(describeLost(l));
      },
    }).subscribe({
      next: (e) => {
        const d = fromWatch(policy, context, e);
        if (d) printer.print(d);
      },
      error: (err: unknown) => {
        failed = err;
        resolve();
      },
    });
    // Audit from the watch probes blocks nothing: with stdout gone there is nothing left to do.
    void untilSignalOrStdoutGone().then((err) => {
      if (err) failed = err;
      sub.unsubscribe();
      resolve();
    });
  });
  await stopped;
  printer.finish();
  return failed ? reportError(failed) : EXIT.OK;
}
