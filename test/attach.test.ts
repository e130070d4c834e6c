/**
 * Attach modes against the real kernel: what `auto` picks and why, and that
 * a refused mode is reported on the error channel and leaves nothing loaded.
 *
 * `CG_EXPECT_AUTO_MODE` says what this kernel allows, from measured facts
 * (../shared/PLATFORM.md): `tracepoint` on the host (fentry refused with
 * EPERM, no CONFIG_KPROBES), `fentry` in the stock-kernel VM. `cargo xtask
 * test` sets it for each place it runs the suite.
 */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { firstValueFrom } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { ChrootWatchError, chrootWatch, type AttachMode } from '../ts/index.js';
import { ourPrograms, record } from './helpers.js';

const EXPECT_AUTO = process.env.CG_EXPECT_AUTO_MODE as AttachMode | undefined;
const BETTER: Record<AttachMode, AttachMode[]> = { fentry: [], kprobe: ['fentry'], tracepoint: ['fentry', 'kprobe'] };

describe('auto mode', () => {
  it(`picks ${EXPECT_AUTO ?? 'the best allowed mode'} and says why each better mode was refused`, async () => {
    const rec = await record({ mode: 'auto' });
    try {
      if (EXPECT_AUTO) expect(rec.info.mode).toBe(EXPECT_AUTO);
      expect(rec.info.refused.map((r) => r.mode)).toEqual(BETTER[rec.info.mode]);
      for (const r of rec.info.refused) {
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
      expect(err).toBeInstanceOf(ChrootWatchError);
      const e = err as ChrootWatchError;
      expect(e.code).toBe('MODE_UNAVAILABLE');
      expect(e.message).toContain(`${mode} mode is not available`);
      expect(e.message).toContain("use mode 'auto'");
      expect(e.refusals.map((r) => [r.mode, r.code])).toEqual([[mode, refusal!.code]]);
    }
    expect(ourPrograms()).toEqual([]);
  });
});

describe('pseudo file systems', () => {
  const mounted = (dir: string, type: string) =>
    readFileSync('/proc/self/mounts', 'utf8')
      .split('\n')
      .some((l) => l.split(' ')[1] === dir && l.split(' ')[2] === type);
  const unmount = (dir: string, type: string) => {
    while (mounted(dir, type)) execFileSync('umount', [dir]);
  };

  it('mounts tracefs and bpffs when they are missing, as on a fresh boot', async () => {
    unmount('/sys/kernel/tracing', 'tracefs');
    // Only an empty bpffs is unmounted: pins would go with it.
    if (readdirSync('/sys/fs/bpf').length === 0) unmount('/sys/fs/bpf', 'bpf');
    const rec = await record();
    rec.stop();
    expect(mounted('/sys/kernel/tracing', 'tracefs')).toBe(true);
    expect(mounted('/sys/fs/bpf', 'bpf')).toBe(true);
  });
});
