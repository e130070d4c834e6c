/**
 * Attach modes against the real kernel: what `auto` picks and why, and that
 * a refused mode is reported on the error channel and leaves nothing loaded.
 *
 * `CG_EXPECT_AUTO_MODE` says what this kernel allows, from measured facts
 * (docs/platform.md): `tracepoint` on the host (fentry refused with
 * EPERM, no CONFIG_KPROBES), `fentry` in the stock-kernel VM. `cargo xtask
 * test` sets it for each place it runs the suite.
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { firstValueFrom } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { ChrootGuardError, chrootWatch, type AttachMode } from '../ts/index.js';
import { heldByThisProcess, record, TEST_MODE } from './helpers.js';

const EXPECT_AUTO = process.env.CG_EXPECT_AUTO_MODE as AttachMode | undefined;
const BETTER: Record<AttachMode, AttachMode[]> = { fentry: [], kprobe: ['fentry'], tracepoint: ['fentry', 'kprobe'] };

describe('auto mode', () => {
  it(`picks ${EXPECT_AUTO ?? 'the best allowed mode'} and says why each better mode was refused`, async () => {
    const rec = await record({ mode: 'auto' });
    try {
      if (EXPECT_AUTO) expect(rec.info.mode).toBe(EXPECT_AUTO);
      expect(rec.info.refused.map((r) => r.mode)).toEqual(BETTER[rec.info.mode]);
      for (const r of rec.info.refused) {
        expect(typeof r.remembered).toBe('boolean'); // a refusal remembered from an earlier start: test/memory.test.ts
        expect(r.reason.length).toBeGreaterThan(20);
        expect(r.code).toMatch(/^[A-Z_]+$/);
      }
      if (EXPECT_AUTO === 'tracepoint') {
        // The host: fentry is refused at load with EPERM; the kernel has no kprobes.
        expect(rec.info.refused.map((r) => [r.mode, r.code, r.stage])).toEqual([
          ['fentry', 'EPERM', 'load'],
          ['kprobe', 'NO_KPROBES', 'attach'],
        ]);
        expect(rec.info.refused[0]!.errno).toBe('EPERM');
        expect(rec.info.refused[1]!.reason).toContain('CONFIG_KPROBES');
      }
    } finally {
      rec.stop();
    }
  });
});

describe.each(['fentry', 'kprobe', 'tracepoint'] as const)('forced %s mode', (mode) => {
  it('attaches where auto found it allowed, else fails with MODE_UNAVAILABLE and leaves nothing loaded', async () => {
    const auto = await record({ mode: 'auto' });
    const refusal = auto.info.refused.find((r) => r.mode === mode);
    const allowed = !refusal && (BETTER[auto.info.mode].includes(mode) || auto.info.mode === mode || BETTER[mode].includes(auto.info.mode));
    auto.stop();
    if (allowed) {
      const rec = await record({ mode });
      expect(rec.info.mode).toBe(mode);
      expect(rec.info.refused).toEqual([]);
      rec.stop();
    } else {
      const err = await firstValueFrom(chrootWatch({ mode })).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(ChrootGuardError);
      const e = err as ChrootGuardError;
      expect(e.code).toBe('MODE_UNAVAILABLE');
      expect(e.message).toContain(`${mode} mode is not available`);
      expect(e.message).toContain("use mode 'auto'");
      expect(e.refusals.map((r) => [r.mode, r.code])).toEqual([[mode, refusal!.code]]);
      // A forced mode is tried for real even where auto remembers its refusal (test/memory.test.ts).
      expect(e.refusals[0]!.remembered).toBe(false);
    }
    expect(heldByThisProcess()).toEqual({ programs: [], maps: [] });
  });
});

describe('pseudo file systems', () => {
  it('mounts tracefs and bpffs when they are missing, as on a fresh boot', () => {
    // In a private mount namespace, so the host's own mounts stay as they are.
    const dist = fileURLToPath(new URL('../dist/index.js', import.meta.url));
    const script = `
      import { readFileSync } from 'node:fs';
      import { chrootWatch } from ${JSON.stringify(dist)};
      const mounted = (dir, type) => readFileSync('/proc/self/mounts', 'utf8').split('\\n').some((l) => l.split(' ')[1] === dir && l.split(' ')[2] === type);
      const before = [mounted('/sys/kernel/tracing', 'tracefs'), mounted('/sys/fs/bpf', 'bpf')];
      const sub = chrootWatch({ mode: ${JSON.stringify(TEST_MODE)}, onAttach: () => {
        console.log(JSON.stringify({ before, after: [mounted('/sys/kernel/tracing', 'tracefs'), mounted('/sys/fs/bpf', 'bpf')] }));
        sub.unsubscribe();
      } }).subscribe({ error: (e) => { console.log(JSON.stringify({ error: e.message })); } });`;
    const r = spawnSync('unshare', ['--mount', '--propagation', 'private', 'sh', '-c',
      'while umount /sys/kernel/tracing 2>/dev/null; do :; done; while umount /sys/fs/bpf 2>/dev/null; do :; done; exec "$0" --input-type=module -e "$1"',
      process.execPath, script], { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)).toEqual({ before: [false, false], after: [true, true] });
  });
});
