/**
 * Pinned guards: a guard pinned in bpffs ({@link ChrootGuard.pin},
 * `chroot-guard enforce --pin`) keeps `lsm/path_chroot` deciding after the
 * process that loaded it exits. These functions find, update and remove it
 * from any later process. Each needs root (CAP_BPF / CAP_SYS_ADMIN) and is
 * synchronous: a few `bpf(2)` calls.
 *
 * What a pinned guard keeps: the BPF link, the policy maps, the counters
 * and the ring buffer of decision events, as files under the pin
 * directory; nothing outside bpffs, so it is gone after a reboot.
 *
 * A pin directory must be one as pinning makes it: a real directory (not
 * a symbolic link) on bpffs, inside a bpffs mount, owned by root (or the
 * user running chroot-guard). Anything else is refused with `PIN_FAILED`
 * before it is read or touched, and removal takes out only the names a
 * guard pins. Once the
 * pinning process is gone, {@link followPinnedGuard} reads its decisions;
 * while nobody does, they wait in the ring buffer and, once it is full,
 * each later one counts in `ringBufferFull`.
 * @module
 */
import { Observable } from 'rxjs/internal/Observable';
import { share } from 'rxjs/internal/operators/share';
import type { BindingBatch, BindingGuardResult, BindingPinnedFollower } from './native/binding.cjs';
import { toDecision, type ChrootDecision, type GuardInfo } from './decision.js';
import { ChrootGuardError, check, errorFromBinding } from './errors.js';
import { decoder, type RawDecision } from './events.js';
import { native } from './native.js';
import type { Policy, PolicyAction } from './policy/types.js';
import { validatePolicy } from './policy/validate.js';
import { NO_LOSS, readBatch, type CounterTotals, type LostReport } from './batch.js';
import { callUser } from './callback.js';
import { attachFlow, isFlowOption, type Flow } from './flow.js';

import { DEFAULT_PIN_DIR } from './defaults.js';

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
  /** Decision events the kernel could not deliver since the guard was loaded: the ring buffer was full (nobody read it for a while: see {@link followPinnedGuard}). */
  readonly ringBufferFull: number;
  /** Decisions made with the default action after an internal error, since the guard was loaded. */
  readonly lsmErrors: number;
}

function dirOf(options: PinOptions): string {
  const dir = options.dir ?? DEFAULT_PIN_DIR;
  check(typeof dir === 'string' && dir.startsWith('/'), 'dir must be an absolute path');
  return dir;
}

/**
 * The guard pinned at `dir`, or null when none is.
 * @throws {ChrootGuardError} `EPERM` without privileges; `PIN_FAILED` when
 * `dir` is not a pin directory (off bpffs, a symbolic link, made by another
 * user) or the pins cannot be read (e.g. pinned by an incompatible
 * version: unload it).
 */
export function pinnedGuard(options: PinOptions = {}): PinnedGuardStatus | null {
  const dir = dirOf(options);
  const s = native().pinnedGuardStatus(dir);
  if (s.failure) throw errorFromBinding(s.failure);
  if (!s.pinned) return null;
  return {
    dir,
    generation: s.generation,
    mode: s.mode as 'enforce' | 'audit',
    defaultAction: s.defaultAction as PolicyAction,
    ruleIds: s.ruleIds,
    linkId: s.linkId,
    programId: s.programId,
    ringBufferFull: s.lost.ringBufferFull,
    lsmErrors: s.lost.lsmErrors,
  };
}

/**
 * Replaces the policy of the guard pinned at `dir`, atomically (as
 * {@link ChrootGuard.update}): on any error the pinned policy stays in force.
 * @throws {PolicyError} `INVALID_POLICY` for a bad policy.
 * @throws {ChrootGuardError} `PIN_FAILED` when no guard is pinned at `dir`
 * or its maps cannot be opened; `INVALID_ARGUMENT` when the policy does not
 * compile; `EPERM` without privileges.
 */
export function updatePinnedGuard(policy: Policy, options: PinOptions = {}): GuardInfo {
  const dir = dirOf(options);
  const r: BindingGuardResult = native().pinnedGuardUpdate(dir, JSON.stringify(validatePolicy(policy)));
  if (r.failure) throw errorFromBinding(r.failure);
  return { generation: r.generation, compiledRules: r.ruleIds.length };
}

/** What {@link unloadPinnedGuard} did. */
export interface PinnedGuardUnload {
  /** A guard was pinned at the directory (its pins, or its empty directory, were there) and is removed. */
  readonly removed: boolean;
  /**
   * Why the pin directory itself stays, or null: it also holds names that
   * chroot-guard does not pin (named in the reason, and left as they are).
   * The guard's own pins are removed all the same.
   */
  readonly kept: string | null;
  /** Leftovers of pins that did not finish (see {@link pinLeftovers}) that are now removed. */
  readonly leftoversRemoved: readonly string[];
  /** `NAME-pinning-PID` directories left in place, each with why: its process still runs (a pin under way, or its PID was reused), or it holds other names. */
  readonly leftoversKept: readonly { readonly dir: string; readonly reason: string }[];
}

/**
 * Removes the guard pinned at `dir`: only the names a guard pins (its link
 * first, which detaches `lsm/path_chroot`: chroot(2) is no longer checked,
 * then its maps), then the directory unless something else is in it
 * ({@link PinnedGuardUnload.kept}). Then the same for what pins that did
 * not finish left beside it ({@link pinLeftovers}). `removed` is false when
 * nothing was pinned there.
 * @throws {ChrootGuardError} `EPERM` without privileges; `PIN_FAILED`,
 * with nothing removed, when `dir` is not a pin directory (off bpffs, a
 * symbolic link, the root of a bpffs mount, or made by another user),
 * and when a pin cannot be removed (run it again to finish).
 */
export function unloadPinnedGuard(options: PinOptions = {}): PinnedGuardUnload {
  const r = native().pinnedGuardUnload(dirOf(options));
  if (r.failure) throw errorFromBinding(r.failure);
  return { removed: r.removed, kept: r.kept ?? null, leftoversRemoved: r.leftoversRemoved, leftoversKept: r.leftoversKept };
}

/**
 * Leftovers of pins that did not finish: pinning makes `NAME-pinning-PID`
 * beside the pin directory `NAME` and renames it into place last, so a
 * process killed in between leaves it behind. Lists those (owned by root)
 * whose process is gone, as absolute paths; {@link unloadPinnedGuard}
 * (`chroot-guard unload`) removes them. Empty when the pin directory's
 * parent is not on bpffs.
 * @throws {ChrootGuardError} `EPERM` without privileges; `PIN_FAILED` when
 * the parent directory cannot be listed.
 */
export function pinLeftovers(options: PinOptions = {}): string[] {
  const r = native().pinnedGuardLeftovers(dirOf(options));
  if (r.failure) throw errorFromBinding(r.failure);
  return r.dirs;
}

/** Options of {@link followPinnedGuard}. */
export interface FollowOptions extends PinOptions {
  /** Called when the kernel reports decisions it could not deliver (`ringBufferFull`) or could not make fully (`lsmErrors`: `failMode` applied, or a deny without per-thread memory); totals count since the guard was loaded. */
  readonly onLost?: (report: LostReport) => void;
  /**
   * Flow control for a consumer that cannot keep up ({@link Flow}): while
   * it is paused nothing is emitted, and the decisions the pinned ring
   * buffer cannot hold meanwhile are counted (`onLost`). The guard keeps
   * enforcing.
   */
  readonly flow?: Flow;
}

/**
 * The decisions of the guard pinned at `options.dir`, read from its pinned
 * ring buffer: first those that waited there since it was pinned (as many
 * as the ring buffer holds; the rest were counted in `ringBufferFull`, and
 * the first {@link FollowOptions.onLost} report says how many), then each
 * new one as it is made. Cold and shared: the first subscriber starts the
 * reader, the last one to leave stops it; the guard stays pinned.
 *
 * A ring buffer has one reader: while a process follows a guard (or the
 * process that pinned it still holds its handle), another follower is
 * refused. Rule ids come from the pinned policy, re-read when a decision of
 * a newer generation arrives; a decision of a generation replaced before
 * the follower started shows its rule as `#index`.
 *
 * Errors arrive on the error channel as {@link ChrootGuardError}: `EPERM`
 * without privileges; `PIN_FAILED` when no guard is pinned at the directory,
 * it was pinned without its ring buffer by an older version, or another
 * process reads it; `INTERNAL` when the reader thread stops.
 * @throws {ChrootGuardError} `INVALID_ARGUMENT` at call time when `onLost`
 * is not a function or `flow` not a {@link Flow}.
 * @example
 * followPinnedGuard().subscribe((d) => console.log(d.denied, d.ruleId, d.resolvedPath));
 */
export function followPinnedGuard(options: FollowOptions = {}): Observable<ChrootDecision> {
  const dir = dirOf(options);
  check(options.onLost === undefined || typeof options.onLost === 'function', 'onLost must be a function');
  check(isFlowOption(options.flow), 'flow must be a Flow');
  return new Observable<ChrootDecision>((subscriber) => {
    const ruleIds = new Map<number, readonly string[]>();
    let lost: CounterTotals = NO_LOSS;
    let closed = false;
    let follower: BindingPinnedFollower | undefined;
    let detachFlow = () => {};
    // Generations looked up once already: a backlog of decisions from a
    // replaced generation must not re-read the pins for each one.
    const looked = new Set<number>();
    const idsOf = (generation: number) => {
      if (!ruleIds.has(generation) && !looked.has(generation)) {
        looked.add(generation);
        const s = native().pinnedGuardStatus(dir);
        if (s.pinned && !s.failure) ruleIds.set(s.generation, s.ruleIds);
      }
      return ruleIds.get(generation);
    };
    const onBatch = (batch: BindingBatch) => {
      if (closed) return;
      lost = readBatch(batch, lost, {
        error: (err) => {
          closed = true;
          follower?.close();
          subscriber.error(err);
        },
        data: (data) => {
          const raw: RawDecision[] = [];
          decoder().decodeBatch(data, [], raw);
          for (const d of raw) subscriber.next(toDecision(d, idsOf(d.generation)));
        },
        lost: (report) => callUser(options.onLost, report),
      });
    };
    try {
      const n = native();
      decoder();
      follower = new n.BindingPinnedFollower(dir);
      const f = follower;
      detachFlow = attachFlow(options.flow, (paused) => f.pause(paused));
      const r = follower.open(onBatch);
      if (r.failure) {
        closed = true;
        follower.close();
        subscriber.error(errorFromBinding(r.failure));
      } else {
        ruleIds.set(r.generation, r.ruleIds);
      }
    } catch (err) {
      closed = true;
      subscriber.error(err instanceof ChrootGuardError ? err : new ChrootGuardError('INTERNAL', String(err), { cause: err }));
    }
    return () => {
      closed = true;
      detachFlow();
      follower?.close();
    };
  }).pipe(share());
}
