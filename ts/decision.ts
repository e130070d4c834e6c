/**
 * The decision type shared by {@link chrootGuard} and
 * {@link followPinnedGuard}, and its construction from a decoded record.
 * @module
 */
import type { ChrootEvent, RawDecision } from './events.js';
import type { PolicyAction } from './policy.js';

/**
 * One decision of the policy on one chroot(2) call, made in the kernel at
 * `security_path_chroot` (the BPF LSM hook `lsm/path_chroot`) before the
 * call completes. Identity fields are as in {@link ChrootEvent}; `path` is
 * the argument read from the syscall's saved user registers, `resolvedPath`
 * the `struct path` the kernel resolved (the one the policy judged).
 */
export interface ChrootDecision extends Omit<ChrootEvent, 'ret' | 'errno' | 'lsmRet' | 'probe' | 'enterTs'> {
  /** What the matching rule says (or the default, when none matched). */
  readonly action: PolicyAction;
  /** The matching rule's id; null when the default decided. */
  readonly ruleId: string | null;
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
   */
  readonly source: 'lsm' | 'watch';
}

/** The part of an event a decision carries: who called, with what path. @internal */
export function identityOf(e: ChrootEvent): Omit<ChrootEvent, 'ret' | 'errno' | 'lsmRet' | 'probe' | 'enterTs'> {
  const { ret, errno, lsmRet, probe, enterTs, ...identity } = e;
  void ret, errno, lsmRet, probe, enterTs;
  return identity;
}

/**
 * A decision from a decoded `lsm/path_chroot` record; `ruleIds` are the
 * rule ids of the record's policy generation, by compiled rule index (when
 * unknown, the rule shows as `#index`).
 * @internal
 */
export function toDecision(d: RawDecision, ruleIds: readonly string[] | undefined): ChrootDecision {
  return {
    ...identityOf(d.event),
    action: d.action,
    ruleId: d.rule === null ? null : (ruleIds?.[d.rule] ?? `#${d.rule}`),
    denied: d.denied,
    wouldDeny: d.action === 'deny',
    policyMode: d.enforcing ? 'enforce' : 'audit',
    generation: d.generation,
    source: 'lsm',
  };
}
