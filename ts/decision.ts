/**
 * What the live guard ({@link chrootGuard}) and pinned guards
 * ({@link followPinnedGuard}, {@link updatePinnedGuard}) share: the
 * decision type and its construction from a decoded record, and the
 * policy in force ({@link GuardInfo}).
 * @module
 */
import { compileObject, copied, IDENTITY_FIELDS, type CallField, type ChrootEvent, type DecisionReason, type RawDecision } from './events.js';
import type { PolicyContext } from './policy/evaluate.js';
import type { PolicyAction } from './policy/types.js';

/** The guard once the policy is in force. */
export interface GuardInfo {
  /** Generation of the policy in force. */
  readonly generation: number;
  /** Number of compiled rules (lists and `not` blocks expand into several). */
  readonly compiledRules: number;
  /**
   * The facts the policy in force was compiled with (the initial mount
   * namespace, the identity of each `exe`): pass it to
   * {@link evaluatePolicy} to decide as the kernel does. Absent for pinned
   * guards updated from another process.
   */
  readonly context?: PolicyContext;
}

/**
 * One decision of the policy on one chroot(2) call, made in the kernel at
 * `security_path_chroot` (the BPF LSM hook `lsm/path_chroot`) before the
 * call completes. Identity fields are as in {@link ChrootEvent}; `path` is
 * the argument read from the syscall's saved user registers, `resolvedPath`
 * the `struct path` the kernel resolved (the one the policy judged).
 */
export interface ChrootDecision extends Omit<ChrootEvent, CallField> {
  /** What the matching rule says (or the default, when none matched). */
  readonly action: PolicyAction;
  /** The matching rule's id; null when no rule decided (see `reason`). */
  readonly ruleId: string | null;
  /**
   * Why: `rule`, `default`, `internal-error` (the program could not decide:
   * a kernel read failed, or `ENOMEM`, no per-thread memory) or
   * `policy-torn` (the policy was replaced twice during the decision). On
   * the last two the policy's `failMode` decided (a deny for `ENOMEM`,
   * whatever `failMode` says) and the kernel counted an `lsmErrors`.
   */
  readonly reason: DecisionReason;
  /**
   * For `internal-error`: the errno name of the failure (`ENOMEM`), else
   * null. Such a decision carries only what BPF helpers give (pid, tid,
   * uid, gid, comm, cgroupId, time): no paths, no namespaces.
   */
  readonly error: string | null;
  /**
   * The caller was in the initial user namespace and the initial mount
   * namespace, as `initialNamespaces` conditions test it (from
   * `current->cred->user_ns` and `current->nsproxy->mnt_ns`). Always false
   * for decisions from the watch probes (`source: 'watch'`), where the
   * evaluator computes it from `userNs` and `mntNs`.
   */
  readonly initialNamespaces: boolean;
  /** The call failed with EPERM because of this decision (`deny` in enforce mode). */
  readonly denied: boolean;
  /** The action is `deny`: in audit mode, the call would have been denied. */
  readonly wouldDeny: boolean;
  /** Mode of the deciding policy. */
  readonly policyMode: 'enforce' | 'audit';
  /** Generation of the deciding policy (1 for the first, +1 per update). */
  readonly generation: number;
  /**
   * `lsm`: decided in the kernel. `watch`: computed after the fact from the
   * watch probes by `enforce --audit` where the BPF LSM cannot run.
   * `replay`: computed from a recording by `replay` ({@link replayPolicy}):
   * would-be, nothing was returned to the caller (`denied` is false).
   */
  readonly source: 'lsm' | 'watch' | 'replay';
}

/** What a decision adds to the caller's identity, in record order. @internal */
export const DECISION_FIELDS = ['action', 'ruleId', 'reason', 'error', 'initialNamespaces', 'denied', 'wouldDeny', 'policyMode', 'generation', 'source'] as const satisfies ReadonlyArray<keyof ChrootDecision>;

// Every decision field is an identity field or in DECISION_FIELDS: one
// added to ChrootDecision and neither list fails to compile here.
const everyField: Exclude<keyof ChrootDecision, (typeof IDENTITY_FIELDS)[number] | (typeof DECISION_FIELDS)[number]> extends never ? true : never = true;
void everyField;

/** The verdict a decision is made of: its fields but `wouldDeny`, which follows from `action`. @internal */
export type Verdict = Pick<ChrootDecision, Exclude<(typeof DECISION_FIELDS)[number], 'wouldDeny'>>;

/**
 * A decision on the call `e` describes: `e`'s identity fields and the
 * verdict `v`, copied field by field ({@link compileObject}: this runs per
 * decision).
 * @internal
 */
export const decisionOf: (e: Omit<ChrootEvent, CallField>, v: Verdict) => ChrootDecision = compileObject(
  ['e', 'v'],
  [
    ...IDENTITY_FIELDS.map((f) => copied('e', 0, f)),
    ...DECISION_FIELDS.map((f) =>
      f === 'wouldDeny' ? { key: f, expression: "v.action === 'deny'", get: (_e: ChrootEvent, v: Verdict) => v.action === 'deny' } : copied('v', 1, f),
    ),
  ],
);

/**
 * A decision from a decoded `lsm/path_chroot` record; `ruleIds` are the
 * rule ids of the record's policy generation, by compiled rule index (when
 * unknown, the rule shows as `#index`).
 * @internal
 */
export function toDecision(d: RawDecision, ruleIds: readonly string[] | undefined): ChrootDecision {
  return decisionOf(d.event, {
    action: d.action,
    ruleId: d.rule === null ? null : (ruleIds?.[d.rule] ?? `#${d.rule}`),
    reason: d.reason,
    error: d.error,
    initialNamespaces: d.initialNamespaces,
    denied: d.denied,
    policyMode: d.enforcing ? 'enforce' : 'audit',
    generation: d.generation,
    source: 'lsm',
  });
}
