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
   * kprobe mode only: calls whose return the exit kretprobe missed, so no
   * event was sent: more calls were in flight at once than its `maxactive`
   * (the kernel's `nmissed` for chroot-guard's events in tracefs
   * `kprobe_profile`). Always 0 in fentry and tracepoint modes. Where the
   * kretprobes had to be attached through the perf kprobe PMU these misses
   * cannot be counted, and `AttachInfo.blindSpots` says so
   * (`MISSES_UNCOUNTED`).
   */
  readonly kretprobeMissed: number;
  /**
   * fentry mode only: runs of the syscall's fentry or fexit program the
   * kernel skipped because the program was already running on that CPU, as
   * a run preempted on a fully preemptible kernel is; each loses one
   * call's own event, and a call skipped at both ends counts twice (an
   * upper bound); callers a `pid`, `uid` or `comm` filter leaves out are
   * counted too. The programs' `recursion_misses` (`bpf_prog_info`, Linux
   * 5.12+). fentry mode is refused where the kernel says it preempts fully
   * (`PREEMPT_FULL`); this
   * counts what a switch at run time (`/sys/kernel/debug/sched/preempt`)
   * or a kernel that does not say so costs. Always 0 in kprobe and
   * tracepoint modes, whose programs run with preemption off.
   */
  readonly recursionMissed: number;
  /**
   * Guard only: decisions the policy program could not make fully (no
   * per-thread memory, a kernel read failed, or the policy was replaced
   * twice during one decision); the policy's `failMode` applied, or a deny
   * without memory. Always 0 for watch.
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

/**
 * Every loss counter, in the order `lost` records write them: the one list
 * the reports, the records and the totals below follow. @internal
 */
export const LOSS_COUNTERS = ['ringBufferFull', 'pendingFull', 'kretprobeMissed', 'recursionMissed', 'lsmErrors', 'allowLost', 'denyLost', 'auditLost'] as const satisfies readonly (keyof LossCounts)[];

/**
 * The causes of calls that produced no event: events plus their sum equal
 * the calls made, or exceed them by the calls `recursionMissed` counted
 * twice. (`ringBufferFull` also counts guard decisions; watch sessions
 * write none.) @internal
 */
export const CALLS_LOST = ['ringBufferFull', 'pendingFull', 'kretprobeMissed', 'recursionMissed'] as const satisfies readonly (keyof LossCounts)[];

/** Calls with no event in `c` (the sum of {@link CALLS_LOST}). @internal */
export function callsLost(c: Pick<LossCounts, (typeof CALLS_LOST)[number]>): number {
  return CALLS_LOST.reduce((n, k) => n + c[k], 0);
}

/** Guard decisions not written, by action. @internal */
export const DECISIONS_LOST = ['allowLost', 'denyLost', 'auditLost'] as const satisfies readonly (keyof LossCounts)[];

/** Decisions not written in `c` (the sum of {@link DECISIONS_LOST}). @internal */
export function decisionsLost(c: Pick<LossCounts, (typeof DECISIONS_LOST)[number]>): number {
  return DECISIONS_LOST.reduce((n, k) => n + c[k], 0);
}

/** Every counter at zero. @internal */
export const NO_LOSS: CounterTotals = Object.freeze(Object.fromEntries(LOSS_COUNTERS.map((k) => [k, 0])) as unknown as CounterTotals);

/** Adds `counts` into `total`, counter by counter (a recording's `lost` records summed). */
export function addLoss(total: Record<keyof LossCounts, number>, counts: LossCounts): void {
  for (const k of LOSS_COUNTERS) total[k] += counts[k];
}

/**
 * The report for the counter totals `total` since `seen`, or null when nothing
 * new was counted. @internal
 */
export function lostSince(seen: CounterTotals, total: LossCounts): LostReport | null {
  const report = { total } as { -readonly [K in keyof LostReport]: LostReport[K] };
  for (const k of LOSS_COUNTERS) report[k] = total[k] - seen[k];
  return callsLost(report) > 0 || report.lsmErrors > 0 ? report : null;
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
