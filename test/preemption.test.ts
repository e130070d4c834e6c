/**
 * fentry mode on a fully preemptible kernel. The kernel skips a tracing
 * program (fentry/fexit) entered on a CPU where it is already running, and a
 * program preempted mid-call still is, so there calls would be lost with
 * nothing counted (docs/platform.md). `auto` therefore refuses fentry with
 * `PREEMPT_FULL` and watches in kprobe mode, whose programs run with
 * preemption off. `cargo xtask test` runs this file in the VM with
 * `/sys/kernel/debug/sched/preempt` switched to `full`; elsewhere the
 * kernel's preemption cannot be set from here, and the file says so.
 */
import { firstValueFrom } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { callsLost } from '../ts/batch.js';
import { chrootWatch, ChrootGuardError, doctor } from '../ts/index.js';
import { attackBench, heldByThisProcess, preemption, record, sleep, threadedCalls } from './helpers.js';

const PREEMPTION = preemption();
const FULL = PREEMPTION === 'full' || PREEMPTION === 'lazy';
if (!FULL) {
  console.log(`preemption tests skipped: ${PREEMPTION === null ? 'no /sys/kernel/debug/sched/preempt on this kernel' : `this kernel runs ${PREEMPTION} preemption`}; cargo xtask test runs them in the VM switched to full`);
}

describe.skipIf(!FULL)(`a fully preemptible kernel (sched/preempt: ${PREEMPTION})`, () => {
  it('auto refuses fentry with PREEMPT_FULL and watches in kprobe mode; a forced fentry fails with MODE_UNAVAILABLE and leaves nothing loaded; doctor says the same', async () => {
    const rec = await record({ mode: 'auto' });
    rec.stop();
    expect(rec.info.mode).toBe('kprobe');
    expect(rec.info.refused.map((r) => [r.mode, r.code, r.remembered])).toEqual([['fentry', 'PREEMPT_FULL', false]]);
    expect(rec.info.refused[0]!.reason).toMatch(/sched\/preempt says (full|lazy): .*use kprobe mode/);
    const err = await firstValueFrom(chrootWatch({ mode: 'fentry' })).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ChrootGuardError);
    expect((err as ChrootGuardError).code).toBe('MODE_UNAVAILABLE');
    expect((err as ChrootGuardError).refusals.map((r) => [r.mode, r.code])).toEqual([['fentry', 'PREEMPT_FULL']]);
    expect(heldByThisProcess()).toEqual({ programs: [], maps: [] });
    const report = await doctor();
    expect(report.auto).toBe('kprobe');
    expect(report.modes.find((m) => m.mode === 'fentry')?.refusal?.code).toBe('PREEMPT_FULL');
    // Never remembered: the switch can change before the next load.
    expect(report.remembered.refusals.filter((r) => r.code === 'PREEMPT_FULL')).toEqual([]);
  });

  it('32 threads of an unprivileged user chrooting at once, watched by auto (kprobe): events plus the calls counted lost equal the calls made', async () => {
    const bench = attackBench();
    const [a, b] = [`${bench.dir}/deny/inner`, `${bench.dir}/open`];
    const [N, K] = [32, 40];
    const rec = await record({ mode: 'auto' });
    try {
      const { pid, threads } = threadedCalls(bench, N, K, a, b);
      expect(threads).toHaveLength(N);
      const calls = N * K * 2;
      await rec.until(() => rec.of(pid).length + callsLost(rec.lost) >= calls, 60_000);
      await sleep(300);
      console.log(`full preemption, ${rec.info.mode} mode: ${calls} calls with ${N} threads at once: ${rec.of(pid).length} events, ${callsLost(rec.lost)} counted lost`);
      expect(rec.of(pid).length + callsLost(rec.lost)).toBe(calls);
    } finally {
      rec.stop();
      bench.remove();
    }
  }, 120_000);
});
