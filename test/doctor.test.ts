/**
 * `doctor` against the real kernel. What each kernel must show
 * comes from measured facts (docs/platform.md), passed by `cargo xtask
 * test` as CG_EXPECT_AUTO_MODE: `tracepoint` on the host (kprobes missing,
 * fentry and LSM refused with EPERM), `fentry` in the stock-kernel VM
 * (fentry, kprobe and the BPF LSM all available).
 */
import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { doctor, type DoctorReport } from '../ts/index.js';
import { CLI, heldByThisProcess } from './helpers.js';
const EXPECT_AUTO = process.env.CG_EXPECT_AUTO_MODE;

function cell(r: DoctorReport, point: string, mechanism: string) {
  const p = r.points.find((x) => x.name === point);
  expect(p, point).toBeDefined();
  const c = p!.checks.find((x) => x.mechanism === mechanism);
  expect(c, `${point} × ${mechanism}`).toBeDefined();
  return c!;
}

const FUNCTIONS = ['__x64_sys_chroot', 'security_path_chroot', 'bpf_lsm_path_chroot'];

function assertReport(r: DoctorReport) {
  expect(r.kernel.btf).toBe(true);
  expect(r.kernel.missingPrivileges).toBeNull();
  for (const tp of ['syscalls:sys_enter_chroot', 'syscalls:sys_exit_chroot']) expect(cell(r, tp, 'tracepoint').ok).toBe(true);
  if (EXPECT_AUTO === 'tracepoint') {
    // The host: only the tracepoint family.
    expect(r.auto).toBe('tracepoint');
    expect(r.kernel.kprobes).toBe(false);
    for (const f of FUNCTIONS) {
      expect(cell(r, f, 'kprobe').denial?.code).toBe('NO_KPROBES');
      expect(cell(r, f, 'fentry').denial?.code).toBe('EPERM');
    }
    expect(cell(r, 'bpf_lsm_path_chroot', 'lsm').denial?.code).toBe('EPERM');
    expect(r.modes.map((m) => [m.mode, m.ok, m.refusal?.code ?? null])).toEqual([
      ['fentry', false, 'EPERM'],
      ['kprobe', false, 'NO_KPROBES'],
      ['tracepoint', true, null],
    ]);
  } else if (EXPECT_AUTO === 'fentry') {
    // The stock Debian kernel in the VM: everything.
    expect(r.auto).toBe('fentry');
    expect(r.kernel.kprobes).toBe(true);
    expect(r.kernel.lsms).toContain('bpf');
    for (const f of FUNCTIONS) {
      expect(cell(r, f, 'kprobe').ok).toBe(true);
      expect(cell(r, f, 'fentry').ok).toBe(true);
    }
    expect(cell(r, 'bpf_lsm_path_chroot', 'lsm').ok).toBe(true);
    expect(r.modes.every((m) => m.ok)).toBe(true);
  } else {
    expect(r.auto).toBe(r.modes.find((m) => m.ok)?.mode ?? null);
  }
  // Every mode was tried for real, and the memory of refused modes is
  // refreshed from those attempts: the refusals certain to repeat (the
  // host's EPERM and NO_KPROBES; none in the VM) are what auto skips now.
  expect(r.modes.every((m) => m.refusal?.remembered !== true)).toBe(true);
  expect(r.remembered).toMatchObject({ file: '/run/chroot-guard/refused-modes.json', refreshed: true, problem: null });
  const lasting = r.modes.filter((m) => m.refusal && ['EPERM', 'NO_KPROBES', 'NO_BTF_FUNC'].includes(m.refusal.code)).map((m) => ({ ...m.refusal!, remembered: true }));
  expect(r.remembered.refusals).toEqual(lasting);
  if (EXPECT_AUTO === 'tracepoint') expect(r.remembered.refusals.map((x) => [x.mode, x.code])).toEqual([['fentry', 'EPERM'], ['kprobe', 'NO_KPROBES']]);
  if (EXPECT_AUTO === 'fentry') expect(r.remembered.refusals).toEqual([]);
}

describe('doctor', () => {
  it(`reports what this kernel allows (auto → ${EXPECT_AUTO ?? '?'}) and leaves nothing loaded`, async () => {
    assertReport(await doctor());
    expect(heldByThisProcess()).toEqual({ programs: [], maps: [] });
  });

  it('chroot-guard doctor --json says the same, with exit code 0', () => {
    const r = spawnSync(process.execPath, [CLI, 'doctor', '--json'], { encoding: 'utf8' });
    expect(r.status).toBe(0);
    assertReport(JSON.parse(r.stdout) as DoctorReport);
  });

  it('chroot-guard doctor prints a table and the reasons', () => {
    const r = spawnSync(process.execPath, [CLI, 'doctor'], { encoding: 'utf8' });
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/attach point\s+│ tracepoint │ kprobe\s+│ fentry\s+│ lsm/);
    expect(r.stdout).toContain(`auto → ${EXPECT_AUTO ?? ''}`);
    expect(r.stdout).toContain('remembered (/run/chroot-guard/refused-modes.json, refreshed from the attempts above): ');
    if (EXPECT_AUTO === 'tracepoint') expect(r.stdout).toMatch(/\n  fentry refused \(EPERM, remembered from an earlier attempt this boot\): .*\n  kprobe refused \(NO_KPROBES, remembered/);
    if (EXPECT_AUTO === 'fentry') expect(r.stdout).toContain('refreshed from the attempts above): nothing, auto tries every mode');
    // The root changes no hook sees are named, on every kernel.
    expect(r.stdout).toMatch(/not seen by any attach point.*\n  pivot_root\(2\): .*sb_pivotroot.*\n  setns\(2\), unshare\(2\) of a mount namespace: /s);
  });

  it('without privileges: says so in every check and exits 4', () => {
    const r = spawnSync('setpriv', ['--bounding-set=-all', '--inh-caps=-all', process.execPath, CLI, 'doctor', '--json'], { encoding: 'utf8' });
    expect(r.status).toBe(4);
    const rep = JSON.parse(r.stdout) as DoctorReport;
    expect(rep.kernel.missingPrivileges).toContain('CAP_BPF');
    expect(rep.auto).toBeNull();
    expect(rep.points.flatMap((p) => p.checks).every((c) => c.denial?.code === 'NO_PRIVILEGES')).toBe(true);
    // Nothing was tried, so the memory is left as it is (and is root's: unreadable here).
    expect(rep.remembered.refreshed).toBe(false);
    expect(rep.remembered.refusals).toEqual([]);
  });
});
