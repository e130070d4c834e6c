/**
 * Pinned guards: a guard pinned in bpffs ({@link ChrootGuard.pin},
 * `chroot-guard enforce --pin`) keeps `lsm/path_chroot` deciding after the
 * process that loaded it exits. These functions find, update and remove it
 * from any later process. Each needs root (CAP_BPF / CAP_SYS_ADMIN) and is
 * synchronous: a few `bpf(2)` calls.
 *
 * What a pinned guard keeps: the BPF link, the policy maps and the
 * counters, as files under the pin directory; nothing outside bpffs, so it
 * is gone after a reboot. Its decisions are not reported once the pinning
 * process is gone: the ring buffer fills and each later decision counts in
 * `ringBufferFull`.
 * @module
 */
import type { BindingGuardResult } from './native/binding.cjs';
import { ChrootWatchError, check, type ChrootWatchErrorCode } from './errors.js';
import type { GuardInfo } from './guard.js';
import { native } from './native.js';
import { validatePolicy, type Policy, type PolicyAction } from './policy.js';

/** Where guards are pinned unless told otherwise. */
export const DEFAULT_PIN_DIR = '/sys/fs/bpf/chroot-guard';

/** Options naming the pin directory. */
export interface PinOptions {
  /** A directory on bpffs that does not exist yet (for `pin`); default {@link DEFAULT_PIN_DIR}. */
  readonly dir?: string;
}

/** A guard pinned in bpffs, read from its pinned maps and link. */
export interface PinnedGuardStatus {
  /** The pin directory. */
  readonly dir: string;
  /** Generation of the policy in force (1 for the first, +1 per update). */
  readonly generation: number;
  /** Mode of the policy in force. */
  readonly mode: 'enforce' | 'audit';
  /** Action when no rule matches. */
  readonly defaultAction: PolicyAction;
  /** Rule id of each compiled rule (a rule with lists compiles into several). */
  readonly ruleIds: readonly string[];
  /** Id of the BPF link (`bpftool link show id N`). */
  readonly linkId: number;
  /** Id of the `lsm/path_chroot` program (`bpftool prog show id N`). */
  readonly programId: number;
  /** Decision events the kernel could not deliver since the guard was loaded: the ring buffer was full (nobody reads it after the pinning process exits). */
  readonly ringBufferFull: number;
  /** Decisions made with the default action after an internal error, since the guard was loaded. */
  readonly lsmErrors: number;
}

function dirOf(options: PinOptions): string {
  const dir = options.dir ?? DEFAULT_PIN_DIR;
  check(typeof dir === 'string' && dir.startsWith('/'), 'dir must be an absolute path');
  return dir;
}

/** @internal */
export function guardFailure(r: { errorCode?: string | null; errorMessage?: string | null; verifierLog?: string | null }): ChrootWatchError {
  return new ChrootWatchError((r.errorCode ?? 'INTERNAL') as ChrootWatchErrorCode, r.errorMessage ?? 'the guard failed', {
    ...(r.verifierLog ? { verifierLog: r.verifierLog } : {}),
  });
}

/**
 * The guard pinned at `dir`, or null when none is.
 * @throws {ChrootWatchError} `EPERM` without privileges; `PIN_FAILED` when
 * the pins cannot be read (e.g. pinned by an incompatible version: unload it).
 */
export function pinnedGuard(options: PinOptions = {}): PinnedGuardStatus | null {
  const dir = dirOf(options);
  const s = native().pinnedGuardStatus(dir);
  if (s.errorCode) throw guardFailure(s);
  if (!s.pinned) return null;
  return {
    dir,
    generation: s.generation,
    mode: s.mode as 'enforce' | 'audit',
    defaultAction: s.defaultAction as PolicyAction,
    ruleIds: s.ruleIds,
    linkId: s.linkId,
    programId: s.programId,
    ringBufferFull: s.ringBufferFull,
    lsmErrors: s.lsmErrors,
  };
}

/**
 * Replaces the policy of the guard pinned at `dir`, atomically (as
 * {@link ChrootGuard.update}): on any error the pinned policy stays in force.
 * @throws {PolicyError} `INVALID_POLICY` for a bad policy.
 * @throws {ChrootWatchError} `PIN_FAILED` when no guard is pinned at `dir`
 * or its maps cannot be opened; `INVALID_ARGUMENT` when the policy does not
 * compile; `EPERM` without privileges.
 */
export function updatePinnedGuard(policy: Policy, options: PinOptions = {}): GuardInfo {
  const dir = dirOf(options);
  const r: BindingGuardResult = native().pinnedGuardUpdate(dir, JSON.stringify(validatePolicy(policy)));
  if (!r.ok) throw guardFailure(r.errorCode === 'CLOSED' ? { ...r, errorCode: 'PIN_FAILED' } : r);
  return { generation: r.generation, compiledRules: r.ruleIds.length };
}

/**
 * Removes the guard pinned at `dir`: its link first, which detaches
 * `lsm/path_chroot` (chroot(2) is no longer checked), then its maps.
 * Returns false when nothing was pinned there.
 * @throws {ChrootWatchError} `EPERM`; `PIN_FAILED` when a pin cannot be
 * removed (run it again to finish).
 */
export function unloadPinnedGuard(options: PinOptions = {}): boolean {
  const r = native().pinnedGuardUnload(dirOf(options));
  if (r.errorCode) throw guardFailure(r);
  return r.removed;
}
