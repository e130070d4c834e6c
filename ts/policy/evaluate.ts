/**
 * The reference evaluator: what the kernel program decides for a chroot
 * call under a policy, computed in JavaScript, and the facts of this host
 * (the context) a policy is compiled and evaluated with.
 * @module
 */
import { errorFromBinding } from '../errors.js';
import type { CallField, ChrootEvent } from '../events.js';
import { native } from '../native.js';
import { asList, canonical, latin1, type Policy, type PolicyAction, type PolicyConditions } from './types.js';

/** A file as the kernel identifies it: what `exe` conditions match. */
export interface FileIdentity {
  /** `inode->i_sb->s_dev` in the kernel's encoding (`major << 20 | minor`), as events' `exeDev`. */
  readonly dev: number;
  /** `inode->i_ino`, as events' `exeIno`. */
  readonly ino: bigint;
}

/**
 * What a policy is matched against besides the call: the facts read when
 * it was compiled. The kernel program has them in its maps; the reference
 * evaluator needs them given. A guard reports the ones it compiled with
 * (`GuardInfo.context`); {@link policyContext} reads them for a policy.
 */
export interface PolicyContext {
  /** Inode number of the initial mount namespace (pid 1's at compile time), or null when unknown. */
  readonly initialMntNs: number | null;
  /** The identity of each `exe` path of the policy, by the path as written. */
  readonly exes: ReadonlyMap<string, FileIdentity>;
}

/** `PROC_USER_INIT_INO`: the initial user namespace's fixed inode number. */
export const INITIAL_USER_NS = 0xeffffffd;

/**
 * Reads the facts `policy` compiles with on this host (the initial mount
 * namespace, each `exe` file's identity), with the loader's own code, so
 * {@link evaluatePolicy} decides as the kernel would.
 * @throws {ChrootGuardError} `INVALID_ARGUMENT` when an `exe` file cannot be
 * identified (it must exist), `NATIVE_UNAVAILABLE` without the addon.
 */
export function policyContext(policy: Policy): PolicyContext {
  const r = native().policyContext(JSON.stringify(policy));
  if (r.failure) throw errorFromBinding(r.failure);
  return contextOf(r);
}

/** The public form of the addon's context. @internal */
export function contextOf(r: { initialMntNs: number; exes: ReadonlyArray<{ path: string; dev: number; ino: string }> }): PolicyContext {
  return { initialMntNs: r.initialMntNs || null, exes: new Map(r.exes.map((x) => [x.path, { dev: x.dev, ino: BigInt(x.ino) }])) };
}

/** What a policy judges of a call: the caller and the new root, every field of {@link ChrootEvent} but the call's own outcome (a decision record carries these too). */
export type CallerFacts = Omit<ChrootEvent, CallField>;

/** What {@link evaluatePolicy} decided. */
export interface Evaluation {
  /** The matching rule's action, or the default's. */
  readonly action: PolicyAction;
  /** The matching rule's id, or null for the default. */
  readonly ruleId: string | null;
  /**
   * Conditions that could not be judged (`RULE: exe`, `RULE: path`,
   * `RULE: initialNamespaces`, `RULE: escapesRoot`, `RULE:
   * cwdOutsideRoot`): a path cut short or not reachable, no executable or
   * no context for it, no initial mount namespace, an escape fact that is
   * null (the kernel's walk could not tell, or the event had no new root). Each held
   * for deny rules and not for others (inverted inside `not`), as in the
   * kernel.
   */
  readonly unknown: readonly string[];
}

/** A condition's outcome: true, false, or undefined when it cannot be judged. */
type Outcome = boolean | undefined;

/** Whether every condition of `c` holds for `e`; undefined ones are named in `unknown` and resolved to `unknownHolds`. */
function conditionsHold(c: PolicyConditions, e: CallerFacts, ctx: PolicyContext | undefined, unknownHolds: boolean, note: (what: string) => void): boolean {
  const any = <T>(v: T | readonly T[] | undefined, actual: T) => v === undefined || asList(v).includes(actual);
  const resolve = (what: string, o: Outcome): boolean => {
    if (o !== undefined) return o;
    note(what);
    return unknownHolds;
  };
  // A subtree of `/` holds for every path: no condition (as the compiler).
  const subtree = c.subtree === undefined || asList(c.subtree).some((p) => canonical(p) === '/') ? undefined : asList(c.subtree).map(canonical);
  let path: Outcome = true;
  if (c.path !== undefined || subtree !== undefined) {
    const known = e.resolvedPathBytes !== null && !e.resolvedPathTruncated && !e.resolvedPathUnreachable;
    if (!known) path = undefined;
    else {
      const resolved = latin1(e.resolvedPathBytes!);
      const exact = c.path === undefined || asList(c.path).some((p) => canonical(p) === resolved);
      const under = subtree === undefined || subtree.some((s) => resolved === s || resolved.startsWith(`${s}/`));
      path = exact && under;
    }
  }
  let exe: Outcome = true;
  if (c.exe !== undefined) {
    const ids = asList(c.exe).map((p) => ctx?.exes.get(p));
    exe = e.exeUnknown || ids.some((id) => id === undefined) ? undefined : ids.some((id) => id!.dev === e.exeDev && id!.ino === e.exeIno);
  }
  let initial: Outcome = true;
  if (c.initialNamespaces !== undefined) {
    const mntNs = ctx?.initialMntNs ?? null;
    initial = mntNs === null ? undefined : (e.userNs === INITIAL_USER_NS && e.mntNs === mntNs) === c.initialNamespaces;
  }
  // The escape facts: null in the event (not computed or not told) cannot be judged.
  const fact = (want: boolean | undefined, actual: boolean | null): Outcome => (want === undefined ? true : actual === null ? undefined : actual === want);
  return (
    resolve('path', path) &&
    resolve('exe', exe) &&
    resolve('initialNamespaces', initial) &&
    resolve('escapesRoot', fact(c.escapesRoot, e.escapesRoot)) &&
    resolve('cwdOutsideRoot', fact(c.cwdOutsideRoot, e.cwdOutsideRoot)) &&
    any(c.uid, e.uid) &&
    any(c.euid, e.euid) &&
    any(c.gid, e.gid) &&
    any(c.egid, e.egid) &&
    (c.comm === undefined || asList(c.comm).some((name) => Buffer.from(name, 'utf8').equals(e.commBytes))) &&
    (c.cgroupId === undefined || asList(c.cgroupId).some((id) => BigInt(id) === e.cgroupId)) &&
    (c.alreadyChrooted === undefined || c.alreadyChrooted === e.callerChrooted) &&
    any(c.mntNs, e.mntNs)
  );
}

/**
 * The reference evaluator: what the kernel program decides, computed in
 * JavaScript from an event's fields. Used for `enforce --audit` where the
 * BPF LSM cannot run (decisions then come from the watch probes, after the
 * fact), and by tests to cross-check the kernel. `context` gives the facts
 * the kernel compiled the policy with (see {@link PolicyContext}); without
 * it `exe` and `initialNamespaces` cannot be judged.
 *
 * Like the kernel, a condition that cannot be judged (a path cut short or
 * not reachable, an unknown executable, a null escape fact) holds for deny rules and not for
 * others, and the reverse inside a `not` block: uncertainty resolves toward
 * denying.
 */
export function evaluatePolicy(policy: Policy, e: CallerFacts, context?: PolicyContext): Evaluation {
  const unknown: string[] = [];
  for (const r of policy.rules) {
    const m = r.match ?? {};
    const deny = r.action === 'deny';
    const note = (what: string) => unknown.push(`${r.id}: ${what}`);
    if (m.not && conditionsHold(m.not, e, context, !deny, note)) continue;
    if (conditionsHold(m, e, context, deny, note)) return { action: r.action, ruleId: r.id, unknown };
  }
  return { action: policy.default ?? 'allow', ruleId: null, unknown };
}
