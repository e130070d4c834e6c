/**
 * A full ring buffer is counted and reported, never silent: with a tiny
 * ring buffer and JavaScript blocked, a burst of real chroot calls must end
 * with delivered + reported lost == calls made, exactly.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { chrootWatch, type LostReport } from '../ts/index.js';
import { sleep, TEST_MODE } from './helpers.js';

const CALLS = 5000;

describe('loss accounting', () => {
  it(`reports every event it could not deliver (${CALLS} calls, 16 KiB ring buffer, stalled consumer)`, async () => {
    // perl makes every call from one process, once told that we are attached.
    const burst = spawn('perl', ['-e', `<STDIN>; chroot("/nonexistent-loss-test") for 1..${CALLS};`], { stdio: ['pipe', 'ignore', 'inherit'] });
    const exited = new Promise((r) => burst.on('exit', r));
    let delivered = 0;
    let wrong = 0;
    let reports = 0;
    let lost: LostReport['total'] = { ringBufferFull: 0, pendingFull: 0, kretprobeMissed: 0, lsmErrors: 0, allowLost: 0, denyLost: 0, auditLost: 0 };
    let stalled = false;
    let attached!: () => void;
    const isAttached = new Promise<void>((r) => (attached = r));
    const sub = chrootWatch({
      mode: TEST_MODE,
      pid: burst.pid!,
      ringBufferBytes: 16 << 10,
      onAttach: () => attached(),
      onLost: (r) => {
        reports++;
        lost = r.total;
      },
    }).subscribe({
      next: (e) => {
        if (e.errno !== 'ENOENT' || e.path !== '/nonexistent-loss-test') wrong++;
        delivered++;
        if (!stalled) {
          // Stall the consumer until the burst is over, so the kernel's ring
          // buffer fills however fast or slow the machine is.
          stalled = true;
          const done = () => {
            try {
              return readFileSync(`/proc/${burst.pid}/stat`, 'utf8').split(') ')[1]!.startsWith('Z');
            } catch {
              return true;
            }
          };
          while (!done());
        }
      },
    });
    try {
      await isAttached;
      burst.stdin.end('go\n');
      await exited;
      const deadline = Date.now() + 20_000;
      while (delivered + lost.ringBufferFull + lost.pendingFull + lost.kretprobeMissed < CALLS && Date.now() < deadline) await sleep(50);
    } finally {
      sub.unsubscribe();
    }
    expect(wrong).toBe(0);
    expect(lost.ringBufferFull).toBeGreaterThan(0);
    expect(reports).toBeGreaterThan(0);
    expect(delivered + lost.ringBufferFull + lost.pendingFull + lost.kretprobeMissed).toBe(CALLS);
  });
});
