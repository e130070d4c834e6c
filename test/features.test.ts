/**
 * The BPF features the programs need, against the real kernel: `doctor`
 * tells them from BTF (crates/loader/src/features.rs), and a kernel that
 * lacks one gets an error naming it, from every entry point, with nothing
 * left loaded.
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
import { chrootGuard, chrootWatch, ChrootGuardError, doctor, type DoctorReport } from '../ts/index.js';
import { CLI, heldByThisProcess } from './helpers.js';

/** The features and releases the loader lists, by name prefix (FEATURES). */
const EXPECTED = [
  ['BPF ring buffer', '5.8', 'every mode'],
  ['bpf_get_current_task_btf()', '5.11', 'every mode'],
  ['task storage in tracing programs', '5.12', 'every mode'],
  ['bpf_loop()', '5.17', 'the guard'],
] as const;

const version = (v: string): number => {
  const [a = 0, b = 0] = v.split(/[.-]/).map(Number);
  return a * 1000 + b;
};
const KERNEL = version(release());
const lacking = EXPECTED.filter(([, since]) => KERNEL < version(since));
const lackingForWatch = lacking.filter(([, , need]) => need === 'every mode');

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

  it('each mode is refused naming the missing features, or none is refused for a missing feature; nothing stays loaded', () => {
    for (const m of report.modes) {
      if (!lackingForWatch.length) {
        expect(m.refusal?.reason ?? '', m.mode).not.toContain('this kernel lacks');
        continue;
      }
      expect(m.refusal?.code, m.mode).toBe('UNSUPPORTED_KERNEL');
      for (const [name, since] of lackingForWatch) expect(m.refusal!.reason).toMatch(new RegExp(`${escape(name)}[^,]* \\(Linux ${since}\\)`));
    }
    expect(heldByThisProcess()).toEqual({ programs: [], maps: [] });
  });

  it.runIf(lackingForWatch.length)('chrootWatch fails with UNSUPPORTED_KERNEL naming each missing feature and the release to run', async () => {
    const e = await failureOf(firstValueFrom(chrootWatch()));
    expect(e.code).toBe('UNSUPPORTED_KERNEL');
    for (const [name, since] of lackingForWatch) expect(e.message).toMatch(new RegExp(`${escape(name)}[^,]* \\(Linux ${since}\\)`));
    expect(e.message).toContain(`run Linux ${lackingForWatch.at(-1)![1]} or later`);
    expect(heldByThisProcess()).toEqual({ programs: [], maps: [] });
  });

  it.runIf(lacking.length)('chrootGuard fails naming what the kernel lacks, leaving nothing loaded', async () => {
    const g = chrootGuard({ mode: 'enforce', rules: [{ id: 'no-escape', action: 'deny', match: { escapesRoot: true } }] });
    const e = await failureOf(g.ready);
    g.stop();
    // Without the programs' own features nothing loads at all; with them,
    // only the policy program's bpf_loop() is missing.
    expect(e.code).toBe(lackingForWatch.length ? 'UNSUPPORTED_KERNEL' : 'LSM_UNAVAILABLE');
    expect(e.message).toContain(lacking[0]![0]);
    expect(heldByThisProcess()).toEqual({ programs: [], maps: [] });
  });

  it('the CLI: doctor names what is missing in its text and exit code; watch exits 3 naming it', () => {
    const d = spawnSync(process.execPath, [CLI, 'doctor'], { encoding: 'utf8' });
    if (lackingForWatch.length) {
      expect(d.status).toBe(3);
      for (const [name, since] of lacking) expect(d.stdout).toMatch(new RegExp(`lacks ${escape(name)}.*, Linux ${since}\\+: `));
      const w = spawnSync(process.execPath, [CLI, 'watch', '--json'], { encoding: 'utf8', timeout: 30_000 });
      expect(w.status).toBe(3);
      expect(w.stderr).toContain('UNSUPPORTED_KERNEL');
      expect(w.stderr).toContain(lackingForWatch[0]![0]);
    } else {
      expect(d.stdout).toContain(`BPF features: all ${EXPECTED.length} the programs need (from BTF)`);
      expect(d.stdout).not.toContain('lacks ');
    }
  });
});
