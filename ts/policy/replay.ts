/**
 * Replay: a policy's would-be decisions over a recording, with
 * {@link evaluatePolicy} (the reference semantics, which the differential
 * test holds equal to the kernel's), counted per rule; and the context
 * (initial mount namespace, `exe` identities) they are judged in.
 * @module
 */
import { addLoss, callsLost, decisionsLost, NO_LOSS, type LossCounts } from '../batch.js';
import { decisionOf, type ChrootDecision } from '../decision.js';
import { ChrootGuardError } from '../errors.js';
import { SAMPLE_LINES, skipsWatchRecords, type RecordingItem } from '../recording.js';
import { evaluatePolicy, INITIAL_USER_NS, policyContext, type FileIdentity, type PolicyContext } from './evaluate.js';
import { asList, type Policy, type PolicyAction } from './types.js';

/** The context a replay judges in, and what in it could not be read. */
export interface ReplayContext {
  readonly context: PolicyContext;
  /** `exe` paths of the policy whose file could not be identified here: their conditions cannot be judged (they hold for deny rules only). */
  readonly unidentified: readonly string[];
}

/**
 * The facts `policy` would be compiled with on this host
 * ({@link policyContext}), for replaying a recording: `exe` paths whose
 * file does not exist here are left out (listed in `unidentified`) rather
 * than failing, and `initialMntNs` (the initial mount namespace's inode
 * number in the recording, when it was made on another host or an earlier
 * boot of a kernel before 6.18, which numbers it at boot) replaces this
 * host's.
 * @throws {ChrootGuardError} `NATIVE_UNAVAILABLE` without the addon.
 */
export function replayContext(policy: Policy, initialMntNs?: number): ReplayContext {
  const exes = new Set<string>();
  for (const r of policy.rules) for (const c of [r.match ?? {}, r.match?.not ?? {}]) for (const p of asList(c.exe)) exes.add(p);
  const probe = (match: object): PolicyContext | null => {
    try {
      return policyContext({ mode: 'audit', rules: [{ id: 'probe', action: 'allow', match }] });
    } catch (err) {
      if (err instanceof ChrootGuardError && err.code === 'INVALID_ARGUMENT') return null;
      throw err;
    }
  };
  const identities = new Map<string, FileIdentity>();
  const unidentified: string[] = [];
  for (const p of exes) {
    const id = probe({ exe: p })?.exes.get(p);
    if (id) identities.set(p, id);
    else unidentified.push(p);
  }
  const mntNs = initialMntNs ?? probe({ initialNamespaces: true })?.initialMntNs ?? null;
  return { context: { initialMntNs: mntNs, exes: identities }, unidentified };
}

/** One rule's count in a {@link ReplaySummary}. */
export interface RuleCount {
  readonly id: string;
  readonly action: PolicyAction;
  /** Decided calls this rule decided (the first to match); 0: it never matched. */
  readonly matched: number;
}

/** What a replay read and decided (the CLI's `summary` record, `events.schema.json`). */
export interface ReplaySummary {
  /** The replayed policy's mode. */
  readonly policyMode: 'enforce' | 'audit';
  /** Highest line number read. */
  readonly lines: number;
  /** Valid records read, by type (`other`: `task`, `summary` and `guard` records, skipped). */
  readonly records: { readonly attach: number; readonly chroot: number; readonly decision: number; readonly lost: number; readonly other: number };
  /** Lines that are not records. */
  readonly malformed: number;
  /** The first 10 of them: line number and what is wrong. */
  readonly malformedLines: ReadonlyArray<{ readonly line: number; readonly message: string }>;
  /** Calls the policy decided: one decision each. */
  readonly decided: number;
  /** `chroot` records of calls that failed before the LSM hook: decided by no policy (see `lsmDecides`). */
  readonly undecided: number;
  /** {@link undecided} by errno name. */
  readonly undecidedByErrno: Readonly<Record<string, number>>;
  /** `decision` records of `internal-error` decisions: they carry no paths or namespaces, so they are not replayed. */
  readonly undecidable: number;
  /**
   * `chroot` records not replayed because the recording has a guard, whose
   * `decision` records stand for the same calls (see `skipsWatchRecords`):
   * each call is counted once. Counted in `records.chroot` too.
   */
  readonly skipped: number;
  /** Decided calls by action. */
  readonly actions: Readonly<Record<PolicyAction, number>>;
  /** Decisions in which a condition could not be judged (it held for deny rules only). */
  readonly unjudged: number;
  /** Each rule of the policy, in order. */
  readonly rules: readonly RuleCount[];
  /** The default action and the decided calls no rule matched. */
  readonly default: { readonly action: PolicyAction; readonly matched: number };
  /** Sum of the recording's `lost` records: calls and decisions the kernel did not deliver. */
  readonly lost: LossCounts;
  /** Nothing was lost: every call the recording's sessions saw is in it. */
  readonly complete: boolean;
}

/** Options of {@link replayPolicy}. */
export interface ReplayOptions {
  /** The facts to judge in (see {@link replayContext}); without it, `exe` and `initialNamespaces` conditions cannot be judged. */
  readonly context?: PolicyContext;
  /**
   * Judge each session's calls by the initial mount namespace its
   * `attach` record names, where it names one (the host and boot it was
   * recorded on), rather than the context's (default true; false when the
   * caller gives the number itself).
   */
  readonly recordedInitialMntNs?: boolean;
  /** Told when a session's `attach` record names an initial mount namespace other than the context's. */
  readonly onInitialMntNs?: (line: number, initialMntNs: number) => void;
  /** Each would-be decision, in recording order, with the item it was made for. */
  readonly onDecision?: (d: ChrootDecision, item: Extract<RecordingItem, { kind: 'call' }>) => void;
  /** Each malformed line, as it is read. */
  readonly onMalformed?: (line: number, message: string) => void;
}

/** Whether a `lost` count means calls or decisions are missing from the recording. @internal */
export const incomplete = (l: LossCounts): boolean => callsLost(l) + decisionsLost(l) > 0;

/**
 * Replays `policy` over a recording ({@link readRecording}'s items): each
 * call a policy decides gets the decision {@link evaluatePolicy} makes, as
 * a {@link ChrootDecision} with `source: 'replay'` (`denied` false:
 * nothing was returned to anyone; `wouldDeny` for a deny), handed to
 * `onDecision`, each session's calls judged by the initial mount namespace
 * its `attach` record names (see `recordedInitialMntNs`); each call once:
 * in a recording with a guard, its `decision` records stand for the calls
 * and the watch's `chroot` records from there on are counted as `skipped`
 * (`skipsWatchRecords`); calls that failed before the LSM hook and
 * `internal-error` decision records are counted, not decided; attach, lost and other
 * records are counted; malformed lines are counted and handed to
 * `onMalformed`. Memory does not grow with the recording.
 * @returns the counts, per rule.
 * @throws {ChrootGuardError} `INVALID_RECORDING` when the recording cannot be read.
 */
export async function replayPolicy(policy: Policy, recording: AsyncIterable<RecordingItem>, options: ReplayOptions = {}): Promise<ReplaySummary> {
  let ctx = options.context;
  const recorded = options.recordedInitialMntNs !== false;
  const perRule = new Map<string, number>(policy.rules.map((r) => [r.id, 0]));
  const records = { attach: 0, chroot: 0, decision: 0, lost: 0, other: 0 };
  const actions: Record<PolicyAction, number> = { allow: 0, deny: 0, audit: 0 };
  const undecidedByErrno: Record<string, number> = {};
  const malformedLines: Array<{ line: number; message: string }> = [];
  const lost: Record<keyof LossCounts, number> = { ...NO_LOSS };
  let lines = 0;
  let malformed = 0;
  let decided = 0;
  let undecided = 0;
  let undecidable = 0;
  let skipped = 0;
  let unjudged = 0;
  let byDefault = 0;
  const mode = policy.mode;
  const skips = skipsWatchRecords();
  for await (const item of recording) {
    lines = item.line;
    if (skips(item)) {
      records.chroot++;
      skipped++;
      continue;
    }
    switch (item.kind) {
      case 'malformed':
        malformed++;
        if (malformedLines.length < SAMPLE_LINES) malformedLines.push({ line: item.line, message: item.message });
        options.onMalformed?.(item.line, item.message);
        continue;
      case 'attach':
        records.attach++;
        if (recorded && item.initialMntNs !== null && item.initialMntNs !== ctx?.initialMntNs) {
          ctx = { initialMntNs: item.initialMntNs, exes: ctx?.exes ?? new Map() };
          options.onInitialMntNs?.(item.line, item.initialMntNs);
        }
        continue;
      case 'other':
        records.other++;
        continue;
      case 'lost':
        records.lost++;
        addLoss(lost, item.counts);
        continue;
    }
    records[item.record]++;
    if (!item.decided) {
      if (item.record === 'chroot') {
        undecided++;
        const errno = item.event.errno ?? 'ok';
        undecidedByErrno[errno] = (undecidedByErrno[errno] ?? 0) + 1;
      } else undecidable++;
      continue;
    }
    decided++;
    const v = evaluatePolicy(policy, item.event, ctx);
    actions[v.action]++;
    if (v.unknown.length) unjudged++;
    if (v.ruleId === null) byDefault++;
    else perRule.set(v.ruleId, perRule.get(v.ruleId)! + 1);
    if (options.onDecision) {
      const e = item.event;
      options.onDecision(
        decisionOf(e, {
          action: v.action,
          ruleId: v.ruleId,
          reason: v.ruleId === null ? 'default' : 'rule',
          error: null,
          initialNamespaces: ctx?.initialMntNs != null && e.userNs === INITIAL_USER_NS && e.mntNs === ctx.initialMntNs,
          denied: false,
          policyMode: mode,
          generation: 0,
          source: 'replay',
        }),
        item,
      );
    }
  }
  return {
    policyMode: mode,
    lines,
    records,
    malformed,
    malformedLines,
    decided,
    undecided,
    undecidedByErrno,
    undecidable,
    skipped,
    actions,
    unjudged,
    rules: policy.rules.map((r) => ({ id: r.id, action: r.action, matched: perRule.get(r.id)! })),
    default: { action: policy.default ?? 'allow', matched: byDefault },
    lost,
    complete: !incomplete(lost),
  };
}
