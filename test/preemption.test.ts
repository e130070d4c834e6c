/**
 * fentry mode on a fully preemptible kernel. The kernel skips a tracing
 * program (fentry/fexit) entered on a CPU where it is already running, and a
 * program preempted mid-call still is, so there calls would be lost
 * (docs/platform.md). `auto` therefore refuses fentry with `PREEMPT_FULL`
 * and watches in kprobe mode, whose programs run with preemption off. A
 * switch to full after fentry attached is counted: the calls the kernel
 * skipped its programs for are `recursionMissed`. `cargo xtask test` runs
 * this file in the VM with
 * `/sys/kernel/debug/sched/preempt` switched to `full`; elsewhere the
 * kernel's preemption cannot be set from here, and the file says so.
 */
import { writeFileSync } from 'node:fs';
import { firstValueFrom } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { callsLost } from '../ts/batch.js';
import { chrootWatch, ChrootGuardError, doctor } from '../ts/index.js';
import { attackBench, heldByThisProcess, PREEMPT_SWITCH, preemption, record, sleep, threadedCalls } from './helpers.js';

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

  it('fentry attached before a switch to full preemption at run time: the calls the kernel skipped its programs for are counted (recursionMissed) in the stream', async () => {
    const bench = attackBench();
    const [a, b] = [`${bench.dir}/deny/inner`, `${bench.dir}/open`];
    const [N, K] = [32, 40];
    // Loaded while the kernel says it preempts voluntarily, so fentry is
    // taken; then switched back, as an administrator could at any time.
    writeFileSync(PREEMPT_SWITCH, 'voluntary');
    let rec: Awaited<ReturnType<typeof record>>;
    try {
      rec = await record({ mode: 'fentry' });
    } finally {
      writeFileSync(PREEMPT_SWITCH, PREEMPTION!);
    }
    try {
      expect(rec.info.mode).toBe('fentry');
      expect(preemption()).toBe(PREEMPTION);
      const { pid, threads } = threadedCalls(bench, N, K, a, b);
      expect(threads).toHaveLength(N);
      const calls = N * K * 2;
      await rec.until(() => rec.of(pid).length + callsLost(rec.lost) >= calls, 60_000);
      await sleep(300);
      const events = rec.of(pid).length;
      const { recursionMissed } = rec.lost;
      console.log(`switched to full preemption after attaching in fentry mode: ${calls} calls with ${N} threads at once: ${events} events, ${recursionMissed} counted as recursionMissed, ${callsLost(rec.lost) - recursionMissed} other losses`);
      // Skips happen: a thread preempted inside a program blocks it on its CPU.
      expect(recursionMissed).toBeGreaterThan(0);
      // Every call is an event or counted; a call skipped at both ends counts twice.
      expect(events + callsLost(rec.lost)).toBeGreaterThanOrEqual(calls);
      expect(events + callsLost(rec.lost) - recursionMissed).toBeLessThanOrEqual(calls);
    } finally {
      rec.stop();
      bench.remove();
    }
  }, 120_000);

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
