/**
 * The BPF features the programs need, against the real kernel: `doctor`
 * tells them from BTF (crates/loader/src/features.rs). A kernel without
 * what the full object needs (5.10) watches with the legacy object, and
 * the guard, which needs more, fails there naming what is missing, with
 * nothing left loaded. (No kernel this suite boots lacks the ring buffer,
 * 5.8, which every mode needs: that error is the loader's unit tests'.)
 *
 * What each kernel has is checked against its release: the kernels this
 * suite runs on (the host's, Debian's 5.10, 6.1 and 6.12 in the VM) are
 * mainline releases without BPF backports, so a feature is there exactly
 * when the release is at least the one that brought it. The lacking side
 * runs on 5.10 (`cargo xtask test --vm-kernel 5.10`), the having side
 * everywhere else.
 */
import { spawnSync } from 'node:child_process';
import { release } from 'node:os';
import { firstValueFrom } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { chrootGuard, ChrootGuardError, doctor, type DoctorReport } from '../ts/index.js';
import { runStep } from '../ts/demo.js';
import { CLI, heldByThisProcess, record } from './helpers.js';

/** The features and releases the loader lists, by name prefix (FEATURES). */
const FULL = 'the guard (watch uses the legacy object without it)';
const EXPECTED = [
  ['BPF ring buffer', '5.8', 'every mode'],
  ['bpf_get_current_task_btf()', '5.11', FULL],
  ['task storage in tracing programs', '5.12', FULL],
  ['BPF callbacks', '5.13', FULL],
  ['bpf_loop()', '5.17', 'the guard'],
] as const;

const version = (v: string): number => {
  const [a = 0, b = 0] = v.split(/[.-]/).map(Number);
  return a * 1000 + b;
};
const KERNEL = version(release());
const lacking = EXPECTED.filter(([, since]) => KERNEL < version(since));
const lackingForWatch = lacking.filter(([, , need]) => need === 'every mode');
const legacy = lacking.some(([, , need]) => need === FULL);

const escape = (s: string) => s.replace(/[()]/g, '\\$&');

const failureOf = async (p: Promise<unknown>): Promise<ChrootGuardError> => {
  const e = await p.then(() => undefined, (x: unknown) => x);
  expect(e).toBeInstanceOf(ChrootGuardError);
  return e as ChrootGuardError;
};

describe(`BPF features on ${release()}: ${lacking.length ? `lacks ${lacking.map(([n]) => n).join(', ')}` : 'has all'}`, () => {
  let report: DoctorReport;

  it('doctor lists each feature with its release, present exactly when the kernel is that release or newer', async () => {
    report = await doctor();
    expect(report.kernel.btf).toBe(true);
    const features = report.kernel.features;
    expect(features.map((f) => [f.since, f.neededBy])).toEqual(EXPECTED.map(([, since, need]) => [since, need]));
    features.forEach((f, i) => expect(f.name.startsWith(EXPECTED[i]![0]), f.name).toBe(true));
    expect(features.map((f) => f.present)).toEqual(EXPECTED.map(([, since]) => KERNEL >= version(since)));
  });

  it('no mode is refused for a missing feature (the legacy object runs where the full one cannot); nothing stays loaded', () => {
    expect(lackingForWatch).toEqual([]);
    for (const m of report.modes) expect(m.refusal?.reason ?? '', m.mode).not.toContain('this kernel lacks');
    expect(report.modes.some((m) => m.ok)).toBe(true);
    expect(heldByThisProcess()).toEqual({ programs: [], maps: [] });
  });

  it.runIf(legacy)('chrootWatch sees a real chroot with the legacy object: its resolved root and executable', async () => {
    const rec = await record();
    try {
      const run = await runStep(['chroot', '/', '/bin/true']);
      await rec.until(() => rec.of(run.pid).length >= 1);
      const [e] = rec.of(run.pid);
      expect(e).toMatchObject({ pid: run.pid, comm: 'chroot', path: '/', resolvedPath: '/', ret: 0, ppid: process.pid });
      expect(e!.exe).toMatch(/\/chroot$/);
    } finally {
      rec.stop();
    }
    expect(heldByThisProcess()).toEqual({ programs: [], maps: [] });
  });

  it.runIf(lacking.length)('chrootGuard fails naming what the kernel lacks, leaving nothing loaded', async () => {
    const g = chrootGuard({ mode: 'enforce', rules: [{ id: 'no-escape', action: 'deny', match: { escapesRoot: true } }] });
    const e = await failureOf(g.ready);
    g.stop();
    expect(e.code).toBe('LSM_UNAVAILABLE');
    for (const [name, since] of lacking) expect(e.message).toMatch(new RegExp(`${escape(name)}[^,]* \\(Linux ${since}\\)`));
    expect(e.message).toContain(`run Linux ${lacking.at(-1)![1]} or later`);
    expect(heldByThisProcess()).toEqual({ programs: [], maps: [] });
  });

  it('the CLI: doctor names what is missing and still exits 0 where a mode works', () => {
    const d = spawnSync(process.execPath, [CLI, 'doctor'], { encoding: 'utf8' });
    expect(d.status, d.stderr).toBe(0);
    if (lacking.length) {
      for (const [name, since, need] of lacking) expect(d.stdout).toMatch(new RegExp(`lacks ${escape(name)}.*, Linux ${since}\\+: needed by ${escape(need)}`));
    } else {
      expect(d.stdout).toContain(`BPF features: all ${EXPECTED.length} the programs need (from BTF)`);
      expect(d.stdout).not.toContain('lacks ');
    }
  });
});
