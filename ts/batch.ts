/**
 * The batch protocol (internal): how every consumer of the addon (kernel
 * sessions, the live guard, the pinned-guard follower) takes one batch: a
 * reader failure, the records to decode, and the kernel's loss counters,
 * reported as they grow. The addon's side (one threadsafe-function call per
 * batch, the in-flight count that bounds what user space holds) is
 * `crates/loader/src/binding/lifecycle.rs`.
 * @internal
 * @module
 */
import type { BindingBatch } from './native/binding.cjs';
import { ChrootGuardError } from './errors.js';

/** The kernel's loss and error counters (`CG_COUNTERS`), as counts. */
export interface LossCounts {
  /**
   * Records not written for lack of ring buffer space: watch events (the
   * ring buffer was full) and guard decisions of every action (the sum of
   * `allowLost`, `denyLost` and `auditLost`).
   */
  readonly ringBufferFull: number;
  /** Calls not traced: syscall entry could not get the thread's in-flight event (the kernel could not allocate its task storage). */
  readonly pendingFull: number;
  /**
   * Guard only: decisions the policy program could not make fully (a map
   * operation or kernel read failed, or the policy was replaced twice during
   * one decision); the policy's `failMode` applied. Always 0 for watch.
   */
  readonly lsmErrors: number;
  /**
   * Guard only: allow decisions not written. Allow records are written only
   * while the ring buffer is less than half full, so a flood of allowed calls
   * cannot push out deny and audit records.
   */
  readonly allowLost: number;
  /** Guard only: deny decisions not written (the ring buffer was full). */
  readonly denyLost: number;
  /** Guard only: audit decisions not written (the ring buffer was full). */
  readonly auditLost: number;
}

/** What the kernel side could not deliver or decide, reported as it is counted: each count since the previous report. */
export interface LostReport extends LossCounts {
  /** Running totals since the session attached. */
  readonly total: LossCounts;
}

/** Counter totals as batches carry them. @internal */
export type CounterTotals = LossCounts;

/** Every counter at zero. @internal */
export const NO_LOSS: CounterTotals = { ringBufferFull: 0, pendingFull: 0, lsmErrors: 0, allowLost: 0, denyLost: 0, auditLost: 0 };

/**
 * The report for the counter totals `total` since `seen`, or null when nothing
 * new was counted. @internal
 */
export function lostSince(seen: CounterTotals, total: LossCounts): LostReport | null {
  const report: LostReport = {
    ringBufferFull: total.ringBufferFull - seen.ringBufferFull,
    pendingFull: total.pendingFull - seen.pendingFull,
    lsmErrors: total.lsmErrors - seen.lsmErrors,
    allowLost: total.allowLost - seen.allowLost,
    denyLost: total.denyLost - seen.denyLost,
    auditLost: total.auditLost - seen.auditLost,
    total,
  };
  return report.ringBufferFull > 0 || report.pendingFull > 0 || report.lsmErrors > 0 ? report : null;
}

/**
 * One batch from the addon, the way every consumer takes it: a reader
 * failure goes to `on.error` (as `INTERNAL`), the records to `on.data`, and
 * counters that grew since `seen` to `on.lost`. Returns the new totals.
 * @internal
 */
export function readBatch(
  batch: BindingBatch,
  seen: CounterTotals,
  on: { error(err: ChrootGuardError): void; data(data: Buffer): void; lost(report: LostReport): void },
): CounterTotals {
  if (batch.error) {
    on.error(new ChrootGuardError('INTERNAL', `the ring buffer reader stopped: ${batch.error}`));
    return seen;
  }
  if (batch.events > 0) on.data(batch.data);
  const report = lostSince(seen, batch.lost);
  if (!report) return seen;
  on.lost(report);
  return report.total;
}
