/**
 * `chroot-guard replay`: a policy's would-be decisions over a recording
 * (`watch --json`, `enforce --json`), and a summary per rule; and
 * `chroot-guard learn`: the allow-list policy a recording calls for.
 * Neither needs root.
 * @internal
 * @module
 */
import { callsLost, decisionsLost } from '../batch.js';
import type { ChrootDecision } from '../decision.js';
import { learnPolicy } from '../policy/learn.js';
import type { PolicyContext } from '../policy/evaluate.js';
import { replayContext, replayPolicy, type ReplaySummary } from '../policy/replay.js';
import { asAudit, type Policy } from '../policy/types.js';
import { loadPolicy } from '../policy/validate.js';
import { readRecording, type RecordingItem } from '../recording.js';
import { EXIT, jsonWithBigInts, note, reportError, resolvedMark, terminalSafe } from './output.js';
import { onStdoutGone } from './stdout.js';
import { inputSize, Progress } from './progress.js';
import { decisionRecord } from './records.js';

/** Malformed lines named on stderr one by one; past this, only counted. */
const MALFORMED_SHOWN = 10;

/** Bytes of output held before a write. */
const FLUSH_AT = 64 * 1024;

/** Lines for stdout, written in blocks (a write per line costs a system call each on a pipe). */
class Out {
  private text = '';
  add(line: string): void {
    this.text += line + '\n';
    if (this.text.length >= FLUSH_AT) this.flush();
  }
  flush(): void {
    if (this.text) process.stdout.write(this.text);
    this.text = '';
  }
}

/** The recording's items, counted for the progress line, until `stop` is aborted (stdout's reader has gone). */
const tracked = (file: string, progress: Progress, stop?: AbortSignal): AsyncIterable<RecordingItem> =>
  readRecording(file, { onBytes: progress.addBytes, onItem: progress.record, ...(stop ? { signal: stop } : {}) });

const MALFORMED_NOTE = (line: number, message: string) => `line ${line}: not a record: ${message}`;

/** Reports malformed lines as they come: the first {@link MALFORMED_SHOWN}, then one line saying more follow. */
function malformedReporter(file: string): (line: number, message: string) => void {
  let n = 0;
  return (line, message) => {
    n++;
    if (n <= MALFORMED_SHOWN) note(`${file}: ${MALFORMED_NOTE(line, message)}`);
    if (n === MALFORMED_SHOWN + 1) note(`${file}: more lines are not records; the summary counts them`);
  };
}

const REPLAY_HEADER = `${'LINE'.padEnd(9)}${'PID'.padEnd(8)}${'COMM'.padEnd(17)}${'UID'.padEnd(7)}${'DECISION'.padEnd(9)}${'RULE'.padEnd(24)}RESOLVED`;

/** One table line of a would-be decision: the recording's line, pid, comm, uid, action, rule, resolved path (caller-controlled fields through {@link terminalSafe}). */
function replayLine(d: ChrootDecision, line: number): string {
  const cell = (s: string, width: number) => `${s.padEnd(width - 1)} `;
  const resolved = d.resolvedPath === null ? '' : resolvedMark(d) + terminalSafe(d.resolvedPathBytes ?? d.resolvedPath);
  return `${cell(String(line), 9)}${cell(String(d.pid), 8)}${cell(terminalSafe(d.commBytes), 17)}${cell(String(d.uid), 7)}${cell(d.action, 9)}${cell(d.ruleId === null ? '(default)' : terminalSafe(d.ruleId), 24)}${resolved}`;
}

/** The summary as text: counts, then a line per rule and the default. */
function summaryText(s: ReplaySummary): string {
  const lines: string[] = [];
  const undecided = Object.entries(s.undecidedByErrno)
    .sort((a, b) => b[1] - a[1])
    .map(([e, n]) => `${e} ${n}`)
    .join(', ');
  lines.push(
    `${s.decided} decided call${s.decided === 1 ? '' : 's'} (${s.records.chroot} chroot and ${s.records.decision} decision records, ${s.lines} lines): ` +
      `${s.actions.allow} allow, ${s.actions.deny} deny${s.actions.audit ? `, ${s.actions.audit} audit` : ''}` +
      `${s.policyMode === 'enforce' ? '' : ' (audit mode: none would fail)'}`,
  );
  if (s.undecided) lines.push(`${s.undecided} call${s.undecided === 1 ? '' : 's'} failed before the LSM hook, decided by no policy (${undecided})`);
  if (s.skipped) lines.push(`${s.skipped} chroot record${s.skipped === 1 ? '' : 's'} not replayed: the recording has a guard, whose decision records stand for the same calls (each call counted once)`);
  if (s.undecidable) lines.push(`${s.undecidable} decision record${s.undecidable === 1 ? '' : 's'} made after an internal error carry no paths: not replayed`);
  if (s.unjudged) lines.push(`${s.unjudged} decision${s.unjudged === 1 ? '' : 's'} with a condition that could not be judged (held for deny rules only)`);
  const width = Math.max(9, ...s.rules.map((r) => r.id.length)) + 2;
  lines.push(`${'RULE'.padEnd(width)}${'ACTION'.padEnd(8)}MATCHED`);
  for (const r of s.rules) lines.push(`${terminalSafe(r.id).padEnd(width)}${r.action.padEnd(8)}${r.matched}${r.matched === 0 ? '  never matched' : r.action === 'deny' ? '  denied' : ''}`);
  lines.push(`${'(default)'.padEnd(width)}${s.default.action.padEnd(8)}${s.default.matched}${s.default.matched && s.default.action === 'deny' ? '  denied' : ''}`);
  lines.push(
    s.complete
      ? 'nothing lost: the recording holds every call its sessions saw'
      : `incomplete recording: ${callsLost(s.lost)} calls and ${decisionsLost(s.lost)} decisions were not delivered (lost records), so they are not replayed`,
  );
  if (s.malformed) lines.push(`${s.malformed} line${s.malformed === 1 ? ' is' : 's are'} not records (first: ${s.malformedLines.map((m) => m.line).join(', ')})`);
  return lines.join('\n');
}

/** Flags of `replay`. */
export interface ReplayFlags {
  policy: string;
  json?: boolean;
  summaryOnly?: boolean;
  failOnDeny?: boolean;
  audit?: boolean;
  initialMntNs?: number;
}

/** `replay --policy FILE RECORDING`. */
export async function replayCommand(file: string, flags: ReplayFlags): Promise<number> {
  let policy: Policy;
  let context: PolicyContext;
  try {
    policy = loadPolicy(flags.policy);
    if (flags.audit) policy = asAudit(policy);
    const c = replayContext(policy, flags.initialMntNs);
    for (const p of c.unidentified) note(`warning: exe ${JSON.stringify(p)} does not exist here: its conditions cannot be judged (they hold for deny rules only)`);
    if (c.context.initialMntNs === null && policy.rules.some((r) => r.match?.initialNamespaces !== undefined || r.match?.not?.initialNamespaces !== undefined)) {
      note('warning: the initial mount namespace cannot be read here (/proc/1/ns/mnt): initialNamespaces conditions cannot be judged; give --initial-mnt-ns');
    }
    context = c.context;
  } catch (err) {
    return reportError(err);
  }
  const stop = new AbortController();
  const stopListening = onStdoutGone(() => stop.abort());
  const out = new Out();
  // The table's header comes with its first line: a recording that cannot be read prints none.
  let header = false;
  const tableLine = (d: ChrootDecision, item: { line: number }) => {
    if (!header) out.add(REPLAY_HEADER);
    header = true;
    out.add(replayLine(d, item.line));
  };
  const progress = new Progress('replay', inputSize(file));
  let summary: ReplaySummary;
  try {
    summary = await replayPolicy(policy, tracked(file, progress, stop.signal), {
      context,
      recordedInitialMntNs: flags.initialMntNs === undefined,
      onInitialMntNs: (line, ns) => note(`line ${line}: the recording's session ran with initial mount namespace ${ns}, not this host's ${context.initialMntNs ?? '(unknown)'}: its calls are judged by its own (another host or boot; --initial-mnt-ns overrides)`),
      onMalformed: malformedReporter(file === '-' ? 'stdin' : file),
      ...(flags.summaryOnly ? {} : { onDecision: flags.json ? (d) => out.add(decisionRecord(d)) : tableLine }),
    });
  } catch (err) {
    out.flush();
    return reportError(err);
  } finally {
    progress.done();
  }
  const { malformedLines: _shown, ...record } = summary;
  if (flags.json) out.add(jsonWithBigInts({ type: 'summary', command: 'replay', ...record }));
  else {
    if (header) out.add('');
    out.add(summaryText(summary));
  }
  out.flush();
  stopListening();
  if (stop.signal.aborted) return EXIT.OK;
  if (summary.malformed) return EXIT.BAD_RECORDING;
  if (flags.failOnDeny && summary.actions.deny > 0) return EXIT.WOULD_DENY;
  return EXIT.OK;
}

/** Flags of `learn`. */
export interface LearnFlags {
  audit?: boolean;
}

/** `learn RECORDING`: the policy as YAML on stdout, what it was learned from on stderr. */
export async function learnCommand(file: string, flags: LearnFlags): Promise<number> {
  const progress = new Progress('learn', inputSize(file));
  const name = file === '-' ? 'stdin' : file;
  const report = malformedReporter(name);
  async function* reported(): AsyncGenerator<RecordingItem> {
    for await (const item of tracked(file, progress)) {
      if (item.kind === 'malformed') report(item.line, item.message);
      yield item;
    }
  }
  let learned;
  try {
    learned = await learnPolicy(reported(), { audit: flags.audit === true, source: name });
  } catch (err) {
    return reportError(err);
  } finally {
    progress.done();
  }
  process.stdout.write(learned.yaml);
  note(`learned ${learned.policy.rules.length} rule${learned.policy.rules.length === 1 ? '' : 's'} (${learned.policy.mode}, default deny) from ${learned.learned} call${learned.learned === 1 ? '' : 's'}${learned.undecided ? `; ${learned.undecided} failed before the LSM hook and need no rule` : ''}`);
  if (learned.deniedInRecording) note(`${learned.deniedInRecording} calls the recorded guard denied are not allowed`);
  if (learned.skipped) note(`${learned.skipped} chroot record${learned.skipped === 1 ? '' : 's'} skipped: the recording has a guard, whose decision records stand for the same calls`);
  if (learned.undecidable) note(`${learned.undecidable} internal-error decision records carry no paths: not learned from`);
  for (const n of learned.notAllowed) note(`line ${n.line}: not allowed: ${n.reason}`);
  if (learned.notAllowedCount > learned.notAllowed.length) note(`${learned.notAllowedCount - learned.notAllowed.length} more calls not allowed`);
  if (!learned.complete) note('warning: the recording is incomplete (its lost records count undelivered calls): the policy may deny calls it never saw');
  return learned.malformed ? EXIT.BAD_RECORDING : EXIT.OK;
}
