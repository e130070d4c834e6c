/**
 * `chrootGuard()`: decide every chroot(2) in the kernel by policy, with the
 * BPF LSM hook `lsm/path_chroot`, and report each decision.
 * @module
 */
import type { Observable } from 'rxjs/internal/Observable';
import { Subject } from 'rxjs/internal/Subject';
import type { BindingBatch, BindingGuard, BindingGuardResult } from './native/binding.cjs';
import { ChrootGuardError, check, checkRingBufferBytes, errorFromBinding } from './errors.js';
import { toDecision, type ChrootDecision, type GuardInfo } from './decision.js';
import { decoder, type RawDecision } from './events.js';
import { native } from './native.js';
import { DEFAULT_PIN_DIR, DEFAULT_RING_BUFFER_BYTES } from './defaults.js';
import { pinnedGuard, type PinOptions, type PinnedGuardStatus } from './pinned.js';
import { contextOf } from './policy/evaluate.js';
import type { Policy } from './policy/types.js';
import { validatePolicy } from './policy/validate.js';
import { NO_LOSS, readBatch, type CounterTotals, type LossCounts, type LostReport } from './batch.js';
import { callUser } from './callback.js';
import { attachFlow, isFlowOption, type Flow } from './flow.js';

export type { ChrootDecision, GuardInfo } from './decision.js';

/** Options of {@link chrootGuard}. */
export interface ChrootGuardOptions {
  /** Kernel ring buffer size for decision events (power of two, bytes; default 4 MiB). */
  readonly ringBufferBytes?: number;
  /**
   * Called when the kernel reports decision events it could not deliver
   * (`ringBufferFull`) or decisions it could not make fully (`lsmErrors`:
   * the policy's `failMode` applied, or a deny without per-thread memory).
   * Never silent.
   */
  readonly onLost?: (report: LostReport) => void;
  /**
   * Flow control for a consumer that cannot keep up ({@link Flow}): while
   * it is paused `decisions$` emits nothing, and the decision events the
   * kernel ring buffer cannot hold meanwhile are counted (`onLost`,
   * `allowLost`/`denyLost`/`auditLost`). The policy is enforced all along.
   */
  readonly flow?: Flow;
}

/** A running guard. */
export interface ChrootGuard {
  /**
   * Every decision from now on (hot: subscribe early to see all). Errors
   * with the start failure, if any; completes on {@link ChrootGuard.stop}.
   */
  readonly decisions$: Observable<ChrootDecision>;
  /**
   * Resolves once the policy is in force in the kernel. Rejects with a
   * {@link ChrootGuardError}: `LSM_UNAVAILABLE` (the BPF LSM cannot run
   * here; the message says why), `EPERM` (privileges), `LOAD_FAILED`.
   */
  readonly ready: Promise<GuardInfo>;
  /**
   * Replaces the policy atomically: the new rules are written beside the
   * old ones and switched in one step. A policy that fails validation or
   * loading is rejected (`INVALID_POLICY`, `INVALID_ARGUMENT`) and the old
   * one stays in force. Rejects with `INTERNAL` when the guard is not
   * running (stopped, or failed to start).
   *
   * Once pinned, other processes may update the same guard
   * ({@link updatePinnedGuard}, `enforce --pin`); this update then works
   * as theirs does: it takes the pin directory's lock and reads the policy
   * in force from the pinned maps before writing, so the generation
   * counts every update whoever made it. Rejects with `PIN_FAILED` when the
   * pin directory cannot be locked.
   */
  update(policy: Policy): Promise<GuardInfo>;
  /**
   * Pins the guard in bpffs under `options.dir` (default
   * `/sys/fs/bpf/chroot-guard`, see {@link pinnedGuard}): `lsm/path_chroot`
   * then keeps deciding after {@link ChrootGuard.stop} and after this process
   * exits, until `unloadPinnedGuard()`. Until stopped, this handle still
   * reports decisions and takes updates. The pins appear all at once or not
   * at all.
   * @throws {ChrootGuardError} `PIN_FAILED` when the directory exists (a
   * guard is pinned there already: update it with {@link updatePinnedGuard})
   * or is not on bpffs, or a pin fails; the guard keeps running unless the
   * message says the program was detached (then `decisions$` errors too).
   * `INTERNAL` when the guard is not running.
   */
  pin(options?: PinOptions): Promise<PinnedGuardStatus>;
  /** Detaches the program and frees every map; chroot(2) is no longer checked (unless pinned: then only the reporting stops). Idempotent. */
  stop(): void;
  /**
   * Totals: decisions delivered, and the kernel's counters (records not
   * written, by action, and decisions made after an internal error).
   */
  stats(): { decisions: number } & LossCounts;
}

/**
 * Starts enforcing (or auditing) `policy` on every chroot(2) of the host.
 * Needs root and a kernel running the BPF LSM.
 * @throws {PolicyError} `INVALID_POLICY` at call time for a bad policy;
 * `INVALID_ARGUMENT` for bad options. Kernel failures reject `ready` and
 * error `decisions$`.
 * @example
 * const guard = chrootGuard({ mode: 'enforce', rules: [{ id: 'jails', action: 'deny', match: { subtree: '/srv/jails' } }] });
 * guard.decisions$.subscribe((d) => console.log(d.ruleId, d.denied, d.resolvedPath));
 * await guard.ready;
 */
export function chrootGuard(policy: Policy, options: ChrootGuardOptions = {}): ChrootGuard {
  const valid = validatePolicy(policy);
  const ring = checkRingBufferBytes(options.ringBufferBytes ?? DEFAULT_RING_BUFFER_BYTES);
  check(options.onLost === undefined || typeof options.onLost === 'function', 'onLost must be a function');
  check(isFlowOption(options.flow), 'flow must be a Flow');
  // Hot: a late subscriber gets the decisions from then on, or the error,
  // or completion once stopped (a Subject replays only those two).
  const decisions$ = new Subject<ChrootDecision>();
  const ruleIds = new Map<number, readonly string[]>();
  let state: 'opening' | 'running' | 'stopped' | 'failed' = 'opening';
  let decisions = 0;
  let lost: CounterTotals = NO_LOSS;
  let binding: BindingGuard | undefined;
  // Decisions that arrive before open() has returned the rule ids wait here.
  let early: RawDecision[] | undefined = [];

  let detachFlow = () => {};
  const fail = (err: ChrootGuardError) => {
    state = 'failed';
    detachFlow();
    decisions$.error(err);
    binding?.close();
  };
  const record = (r: BindingGuardResult): GuardInfo => {
    ruleIds.set(r.generation, r.ruleIds);
    for (const g of ruleIds.keys()) if (g < r.generation - 8) ruleIds.delete(g);
    return { generation: r.generation, compiledRules: r.ruleIds.length, ...(r.context ? { context: contextOf(r.context) } : {}) };
  };
  const deliver = (raw: readonly RawDecision[]) => {
    for (const d of raw) {
      const decision = toDecision(d, ruleIds.get(d.generation));
      decisions++;
      decisions$.next(decision);
    }
  };
  const onBatch = (batch: BindingBatch) => {
    if (state === 'stopped' || state === 'failed') return;
    lost = readBatch(batch, lost, {
      error: fail,
      data: (data) => {
        const raw: RawDecision[] = [];
        decoder().decodeBatch(data, [], raw);
        if (early) early.push(...raw);
        else deliver(raw);
      },
      lost: (report) => callUser(options.onLost, report),
    });
  };

  let opened: Promise<GuardInfo>;
  try {
    const n = native();
    decoder();
    binding = new n.BindingGuard(ring);
    const b = binding;
    detachFlow = attachFlow(options.flow, (paused) => b.pause(paused));
    opened = binding.open(JSON.stringify(valid), onBatch).then((r) => {
      if (state === 'stopped') throw new ChrootGuardError('INTERNAL', 'the guard was stopped before it started');
      if (r.failure) throw errorFromBinding(r.failure);
      state = 'running';
      const info = record(r);
      const waiting = early ?? [];
      early = undefined;
      deliver(waiting);
      return info;
    });
  } catch (err) {
    opened = Promise.reject(err instanceof ChrootGuardError ? err : new ChrootGuardError('INTERNAL', String(err), { cause: err }));
  }
  opened.catch((err: unknown) => {
    if (state !== 'stopped') fail(err as ChrootGuardError);
  });

  return {
    decisions$: decisions$.asObservable(),
    ready: opened,
    async update(next: Policy): Promise<GuardInfo> {
      const p = validatePolicy(next);
      await opened;
      if (state !== 'running' || !binding) throw new ChrootGuardError('INTERNAL', 'the guard is not running');
      const r = binding.update(JSON.stringify(p));
      if (r.failure) throw errorFromBinding(r.failure);
      return record(r);
    },
    async pin(pinOptions: PinOptions = {}): Promise<PinnedGuardStatus> {
      await opened;
      if (state !== 'running' || !binding) throw new ChrootGuardError('INTERNAL', 'the guard is not running');
      const r = binding.pin(pinOptions.dir ?? DEFAULT_PIN_DIR);
      if (r.failure) {
        const err = errorFromBinding(r.failure);
        if (r.stopped) fail(err);
        throw err;
      }
      const status = pinnedGuard(pinOptions);
      if (!status) throw new ChrootGuardError('PIN_FAILED', `${pinOptions.dir ?? DEFAULT_PIN_DIR}: the pins vanished right after pinning (unloaded by another process?)`);
      return status;
    },
    stop() {
      if (state === 'stopped') return;
      state = 'stopped';
      detachFlow();
      binding?.close();
      decisions$.complete(); // a no-op after an error: late subscribers still get it
    },
    stats() {
      return { decisions, ...(binding?.stats().lost ?? lost) };
    },
  };
}
