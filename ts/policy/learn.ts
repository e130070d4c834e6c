/**
 * Learn: the smallest allow-list policy that allows every call a recording
 * shows a policy deciding, and denies the rest; written as YAML with the
 * counts it was learned from as comments.
 *
 * The merge rule (one list: {@link mergeRoots}): per executable and uid,
 * each observed new root is allowed as a `subtree`; a root below another
 * observed root is covered by it; two or more roots with the same parent
 * directory become that parent's subtree when the parent is at least
 * {@link MIN_MERGE_DEPTH} components deep (never `/`, never a top-level
 * directory such as `/tmp` or `/srv`), repeated until nothing changes. A
 * chroot to `/` itself is allowed as the exact `path: /`, never as a
 * subtree. Rules of several executables with the same uid and the same
 * subtrees become one rule with an `exe` list.
 * @module
 */
import { createRequire } from 'node:module';
import { addLoss, callsLost, decisionsLost, NO_LOSS, type LossCounts } from '../batch.js';
import { displayBytes } from '../events.js';
import { SAMPLE_LINES, skipsWatchRecords, type RecordingItem } from '../recording.js';
import type { CallerFacts } from './evaluate.js';
import { incomplete } from './replay.js';
import { MAX_PATH_BYTES, PolicyError, type Policy, type PolicyRule } from './types.js';
import { validatePolicy } from './validate.js';

/** Components a parent directory needs before sibling roots merge into its subtree (`/srv/chroots`: 2). */
export const MIN_MERGE_DEPTH = 2;

/**
 * Distinct roots one executable and uid may hold before they are merged
 * as they stand (then again at twice what a merge left): memory follows
 * what the policy will name, not every root a long recording shows (a
 * build farm's fresh root per build merges into their parent).
 */
const COMPACT_AT = 4096;

/** Options of {@link learnPolicy}. */
export interface LearnOptions {
  /** Write `mode: audit` (report, deny nothing) instead of `enforce`. */
  readonly audit?: boolean;
  /** Where the recording came from, for the header comment. */
  readonly source?: string;
}

/** A line of the recording that was not learned from, and why. */
export interface NotLearned {
  /** Its 1-based line number. */
  readonly line: number;
  /** Why: what could not be named, or what is wrong with the line. */
  readonly reason: string;
}

/** What {@link learnPolicy} learned. */
export interface LearnedPolicy {
  /** The policy: `default: deny`, allow rules only; validated. */
  readonly policy: Policy;
  /** The same as YAML, with the counts it was learned from as comments; passes `chroot-guard check`. */
  readonly yaml: string;
  /** Decided calls learned from. */
  readonly learned: number;
  /** Calls that failed before the LSM hook: no policy decides them, none is needed. */
  readonly undecided: number;
  /** Calls the recorded guard denied (`decision` records with `denied`): not learned, they never ran. */
  readonly deniedInRecording: number;
  /** `internal-error` decision records: they carry no paths, so they cannot be learned from. */
  readonly undecidable: number;
  /** `chroot` records not learned from because the recording's guard `decision` records stand for the same calls (as `replay` skips them: `skipsWatchRecords`). */
  readonly skipped: number;
  /** Observed calls the policy does not allow (an executable and a root that cannot be named both): the first 10. */
  readonly notAllowed: readonly NotLearned[];
  /** How many such calls in all. */
  readonly notAllowedCount: number;
  /** Lines that are not records: the first 10. */
  readonly malformedLines: readonly NotLearned[];
  /** How many lines are not records, in all. */
  readonly malformed: number;
  /** Sum of the recording's `lost` records. */
  readonly lost: LossCounts;
  /** Nothing was lost: every call the recording's sessions saw is in it. */
  readonly complete: boolean;
}

/** One subtree {@link mergeRoots} allows: the calls it covers and how many observed roots it stands for. */
export interface MergedRoot {
  /** Calls into it or below it. */
  calls: number;
  /** Observed roots it stands for (1: itself). */
  roots: number;
}

/** A policy path (the display form: bytes that are not UTF-8 as `\xHH`, a backslash `\\`) of raw bytes given as a latin1 string. */
const policyPath = (latin1: string): string => displayBytes(Buffer.from(latin1, 'latin1'));

const depth = (p: string) => (p === '/' ? 0 : p.split('/').length - 1);
const parentOf = (p: string) => p.slice(0, p.lastIndexOf('/')) || '/';

/**
 * Merges observed roots into subtrees by the rule in this module's
 * description.
 * @param observed each root's bytes as a latin1 string (one character per
 * byte; `/` itself excluded), and its calls (or what an earlier merge
 * made of it).
 * @returns the subtrees, the same way, with what each covers.
 */
export function mergeRoots(observed: ReadonlyMap<string, number | MergedRoot>): Map<string, MergedRoot> {
  let roots = new Map<string, MergedRoot>([...observed].map(([p, c]) => [p, typeof c === 'number' ? { calls: c, roots: 1 } : { ...c }]));
  for (;;) {
    // Covered: a root below another root of the set goes into it.
    const sorted = [...roots.keys()].sort();
    const kept = new Map<string, MergedRoot>();
    let top: string | undefined;
    for (const p of sorted) {
      if (top !== undefined && p.startsWith(`${top}/`)) {
        const t = kept.get(top)!;
        t.calls += roots.get(p)!.calls;
        t.roots += roots.get(p)!.roots;
      } else {
        kept.set(p, { ...roots.get(p)! });
        top = p;
      }
    }
    // Siblings: into their parent, when it is deep enough.
    const byParent = new Map<string, string[]>();
    for (const p of kept.keys()) {
      const parent = parentOf(p);
      if (depth(parent) >= MIN_MERGE_DEPTH) byParent.set(parent, [...(byParent.get(parent) ?? []), p]);
    }
    let changed = false;
    for (const [parent, children] of byParent) {
      if (children.length < 2) continue;
      changed = true;
      const merged: MergedRoot = { calls: 0, roots: 0 };
      for (const c of children) {
        merged.calls += kept.get(c)!.calls;
        merged.roots += kept.get(c)!.roots;
        kept.delete(c);
      }
      kept.set(parent, merged);
    }
    roots = kept;
    if (!changed) return roots;
  }
}

/** The observations of one executable (or none: `exe` null) and uid. */
interface Group {
  exe: string | null;
  uid: number;
  calls: number;
  /** Roots by their bytes (latin1), `/` excluded; merged whenever there are {@link Group.compactAt} of them. */
  roots: Map<string, MergedRoot>;
  /** When to merge the roots held so far: {@link COMPACT_AT}, then twice what a merge left. */
  compactAt: number;
  /** Calls to `/` itself. */
  slash: number;
  /** Calls whose new root has no path to judge (unreachable or cut short). */
  anyRoot: number;
}

/** Why an executable cannot be named in an `exe` condition, or null when it can (its path names it on the host it ran on). */
function exeProblem(e: CallerFacts): string | null {
  if (e.exeUnknown || e.exeBytes === null) return 'no executable';
  if (e.exeMemfd) return 'a memfd';
  if (e.exeDeleted) return 'deleted';
  if (e.exeUnreachable) return 'outside its mount namespace';
  if (e.exeTruncated || e.exeBytes.length > MAX_PATH_BYTES) return 'path cut short';
  if (e.exeBytes[0] !== 0x2f) return 'not an absolute path';
  return null;
}

/** A rule id from an executable's name and a uid, unique within `taken`. */
function ruleId(exe: string | null, uid: number, suffix: string, taken: Set<string>): string {
  const base = exe === null ? 'any-exe' : exe.slice(exe.lastIndexOf('/') + 1).replace(/[^A-Za-z0-9._-]+/g, '_').replace(/^[^A-Za-z0-9]+/, '').slice(0, 32) || 'exe';
  const stem = `${base}-uid${uid}${suffix}`;
  let id = stem;
  for (let n = 2; taken.has(id); n++) id = `${stem}-${n}`;
  taken.add(id);
  return id;
}

const plural = (n: number, one: string, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;

/**
 * Learns a policy from a recording ({@link readRecording}'s items): every
 * call a policy decides (see `lsmDecides`), but those the recorded guard
 * denied, is allowed by a rule of its executable (`exe`, matched by
 * identity) and real `uid`, with its new root in the rule's `subtree`s
 * (merged by {@link mergeRoots}); `default: deny`, `mode: enforce` (or
 * `audit`). A call whose executable cannot be named (none, a memfd,
 * deleted, outside the caller's mount namespace, cut short) is allowed by
 * a rule of its uid and root without `exe`; a call whose new root has no
 * path to judge (unreachable, cut short) by a rule of its executable and
 * uid without `subtree` (so that executable may chroot anywhere as that
 * uid: its comment says so); a call with neither is not allowed
 * (`notAllowed`). Memory grows with the distinct executables and uids and
 * the subtrees their roots merge into, not with the calls.
 * @throws {PolicyError} `INVALID_POLICY` when what was learned is over a
 * policy's limits (more than 64 rules: many executables and uids).
 * @throws {ChrootGuardError} `INVALID_RECORDING` when the recording cannot be read.
 */
export async function learnPolicy(recording: AsyncIterable<RecordingItem>, options: LearnOptions = {}): Promise<LearnedPolicy> {
  const groups = new Map<string, Group>();
  const notAllowed: NotLearned[] = [];
  const malformedLines: NotLearned[] = [];
  const lost: Record<keyof LossCounts, number> = { ...NO_LOSS };
  let notAllowedCount = 0;
  let malformed = 0;
  let learned = 0;
  let undecided = 0;
  let deniedInRecording = 0;
  let undecidable = 0;
  let skipped = 0;
  const skips = skipsWatchRecords();
  for await (const item of recording) {
    if (skips(item)) {
      skipped++;
      continue;
    }
    if (item.kind === 'malformed') {
      malformed++;
      if (malformedLines.length < SAMPLE_LINES) malformedLines.push({ line: item.line, reason: item.message });
      continue;
    }
    if (item.kind === 'lost') addLoss(lost, item.counts);
    if (item.kind !== 'call') continue;
    if (!item.decided) {
      if (item.record === 'chroot') undecided++;
      else undecidable++;
      continue;
    }
    if (item.record === 'decision' && item.recorded.denied) {
      deniedInRecording++;
      continue;
    }
    const e = item.event;
    const exe = exeProblem(e) === null ? displayBytes(e.exeBytes!) : null;
    const pathKnown = e.resolvedPathBytes !== null && !e.resolvedPathTruncated && !e.resolvedPathUnreachable;
    if (exe === null && !pathKnown) {
      notAllowedCount++;
      if (notAllowed.length < SAMPLE_LINES) notAllowed.push({ line: item.line, reason: `executable ${exeProblem(e)} and new root ${e.resolvedPathUnreachable ? 'unreachable' : 'unknown'}: an allow rule for it would need neither condition` });
      continue;
    }
    learned++;
    const key = `${e.uid}\0${exe ?? ''}\0${exe === null ? 0 : 1}`;
    let g = groups.get(key);
    if (!g) groups.set(key, (g = { exe, uid: e.uid, calls: 0, roots: new Map(), compactAt: COMPACT_AT, slash: 0, anyRoot: 0 }));
    g.calls++;
    if (!pathKnown) g.anyRoot++;
    else {
      const root = e.resolvedPathBytes!.toString('latin1');
      if (root === '/') g.slash++;
      else {
        const r = g.roots.get(root);
        if (r) r.calls++;
        else g.roots.set(root, { calls: 1, roots: 1 });
        if (g.roots.size >= g.compactAt) {
          g.roots = mergeRoots(g.roots);
          g.compactAt = Math.max(COMPACT_AT, 2 * g.roots.size);
        }
      }
    }
  }

  // Rules, ordered by uid then executable; executables sharing a uid and subtrees share a rule.
  interface Draft {
    exes: Array<{ exe: string; calls: number }>;
    uid: number;
    subtrees: Map<string, MergedRoot>;
    calls: number;
    anyExe: boolean;
  }
  const drafts: Draft[] = [];
  const sameSubtrees = new Map<string, Draft>();
  const slashRules: Array<{ exe: string | null; uid: number; calls: number }> = [];
  const anyRootRules: Array<{ exe: string; uid: number; calls: number }> = [];
  // By code unit, not locale: the same recording learns the same text everywhere.
  const byExe = (a: string | null, b: string | null) => ((a ?? '') < (b ?? '') ? -1 : (a ?? '') > (b ?? '') ? 1 : 0);
  const sortedGroups = [...groups.values()].sort((a, b) => a.uid - b.uid || byExe(a.exe, b.exe));
  for (const g of sortedGroups) {
    if (g.slash) slashRules.push({ exe: g.exe, uid: g.uid, calls: g.slash });
    if (g.anyRoot) anyRootRules.push({ exe: g.exe!, uid: g.uid, calls: g.anyRoot });
    if (g.roots.size === 0) continue;
    const subtrees = mergeRoots(g.roots);
    const calls = g.calls - g.slash - g.anyRoot;
    const shape = `${g.uid}\0${g.exe === null}\0${[...subtrees.keys()].sort().join('\0')}`;
    const same = g.exe !== null ? sameSubtrees.get(shape) : undefined;
    if (same) {
      same.exes.push({ exe: g.exe!, calls });
      same.calls += calls;
      for (const [p, r] of subtrees) {
        const s = same.subtrees.get(p)!;
        s.calls += r.calls;
        s.roots += r.roots;
      }
      continue;
    }
    const d: Draft = { exes: g.exe === null ? [] : [{ exe: g.exe, calls }], uid: g.uid, subtrees, calls, anyExe: g.exe === null };
    drafts.push(d);
    if (g.exe !== null) sameSubtrees.set(shape, d);
  }

  const taken = new Set<string>();
  const rules: PolicyRule[] = [];
  const comments: Array<{ rule: string; subtree?: string[]; exe?: string[] }> = [];
  const who = (exes: Array<{ exe: string; calls: number }>, uid: number) => `${exes.length === 0 ? 'any executable' : exes.length === 1 ? exes[0]!.exe : plural(exes.length, 'executable')} as uid ${uid}`;
  for (const d of drafts) {
    const subtrees = [...d.subtrees.keys()].sort();
    const match = { ...(d.anyExe ? {} : { exe: d.exes.map((x) => x.exe) }), uid: d.uid, subtree: subtrees.map(policyPath) };
    rules.push({ id: ruleId(d.exes[0]?.exe ?? null, d.uid, '', taken), action: 'allow', match });
    comments.push({
      rule: ` ${plural(d.calls, 'call')} by ${who(d.exes, d.uid)}${d.anyExe ? ' (executables that cannot be named: none, a memfd, deleted, outside the mount namespace or cut short)' : ''}`,
      subtree: subtrees.map((p) => {
        const r = d.subtrees.get(p)!;
        return ` ${plural(r.calls, 'call')}${r.roots > 1 ? `, ${r.roots} roots merged` : ''}`;
      }),
      exe: d.exes.length > 1 ? d.exes.map((x) => ` ${plural(x.calls, 'call')}`) : [],
    });
  }
  for (const s of slashRules) {
    // Lists, as in every learned rule: an executable or a path added later is one more item.
    rules.push({ id: ruleId(s.exe, s.uid, '-slash', taken), action: 'allow', match: { ...(s.exe === null ? {} : { exe: [s.exe] }), uid: s.uid, path: ['/'] } });
    comments.push({ rule: ` ${plural(s.calls, 'call')} to / itself by ${s.exe ?? 'any executable'} as uid ${s.uid}` });
  }
  for (const a of anyRootRules) {
    rules.push({ id: ruleId(a.exe, a.uid, '-any-root', taken), action: 'allow', match: { exe: [a.exe], uid: a.uid } });
    comments.push({ rule: ` ${plural(a.calls, 'call')} by ${a.exe} as uid ${a.uid} into a root with no path to judge (unreachable from the caller's mount namespace, or cut short): this rule lets it chroot anywhere as that uid; narrow or delete it` });
  }
  let policy: Policy;
  try {
    policy = validatePolicy({ mode: options.audit ? 'audit' : 'enforce', default: 'deny', rules });
  } catch (err) {
    if (!(err instanceof PolicyError)) throw err;
    const why = 'in what was learned: the recording shows more executables, uids or roots that do not merge than one policy holds; learn from a narrower recording (watch --comm, --uid, --pid)';
    throw new PolicyError(err.problems.map((p) => ({ ...p, message: `${p.message} ${why}` })));
  }

  const YAML = createRequire(import.meta.url)('yaml') as typeof import('yaml');
  const doc = new YAML.Document(policy);
  const complete = !incomplete(lost);
  doc.commentBefore = [
    ` Learned by chroot-guard learn${options.source ? ` from ${options.source}` : ''}: ${plural(learned, 'call')} allowed, by ${plural(rules.length, 'rule')}; everything else is denied.`,
    ...(undecided ? [` ${plural(undecided, 'call')} failed before the LSM hook (no policy decides them).`] : []),
    ...(deniedInRecording ? [` ${plural(deniedInRecording, 'call')} the recorded guard denied: not allowed here.`] : []),
    ...(undecidable ? [` ${plural(undecidable, 'decision')} made after an internal error carry no paths: not learned from.`] : []),
    ...(skipped ? [` ${plural(skipped, 'chroot record')} skipped: the recording's guard decisions stand for the same calls (each call once).`] : []),
    ...(notAllowedCount ? [` ${plural(notAllowedCount, 'call')} not allowed: neither the executable nor the new root can be named (first at line ${notAllowed[0]!.line}).`] : []),
    ...(complete ? [] : [` The recording is incomplete: the kernel did not deliver ${callsLost(lost)} calls and ${decisionsLost(lost)} decisions; what they were is not known.`]),
    ...(malformed ? [` ${plural(malformed, 'line')} of the recording could not be read (first at line ${malformedLines[0]!.line}).`] : []),
    ' exe conditions match the file at that path by device and inode when the policy loads.',
  ].join('\n');
  const seq = doc.get('rules', true) as import('yaml').YAMLSeq;
  seq.items.forEach((node, i) => {
    const c = comments[i]!;
    (node as import('yaml').YAMLMap).commentBefore = c.rule;
    const subtree = doc.getIn(['rules', i, 'match', 'subtree'], true) as import('yaml').YAMLSeq | undefined;
    c.subtree?.forEach((text, j) => ((subtree!.items[j] as import('yaml').Scalar).comment = text));
    const exe = doc.getIn(['rules', i, 'match', 'exe'], true) as import('yaml').YAMLSeq | undefined;
    c.exe?.forEach((text, j) => ((exe!.items[j] as import('yaml').Scalar).comment = text));
  });
  return {
    policy,
    yaml: doc.toString({ lineWidth: 0 }),
    learned,
    undecided,
    deniedInRecording,
    undecidable,
    skipped,
    notAllowed,
    notAllowedCount,
    malformedLines,
    malformed,
    lost,
    complete,
  };
}
