/**
 * `doctor` and `stacks` against the real kernel. What each kernel must show
 * comes from measured facts (docs/platform.md), passed by `cargo xtask
 * test` as CG_EXPECT_AUTO_MODE: `tracepoint` on the host (kprobes missing,
 * fentry and LSM refused with EPERM), `fentry` in the stock-kernel VM
 * (fentry, kprobe and the BPF LSM all available).
 */
import { spawn, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { runStep } from '../ts/demo.js';
import { countStacks, doctor, type DoctorReport } from '../ts/index.js';
import { heldByThisProcess } from './helpers.js';

const CLI = fileURLToPath(new URL('../dist/cli.js', import.meta.url));
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
  });
});

describe('stacks', () => {
  it('counts the kernel stacks of a chroot workload at each hook, symbolized', async () => {
    let calls = 0;
    // Count until the workload is done, however slow the machine.
    const done = new AbortController();
    const r = await countStacks({
      durationMs: 60_000,
      signal: done.signal,
      onAttach: () => {
        void (async () => {
          for (let i = 0; i < 3; i++) {
            await runStep(['chroot', '/nonexistent-stacks-test', '/bin/true']);
            await runStep(['chroot', '/', '/bin/true']);
            calls += 2;
          }
          done.abort();
        })();
      },
    });
    expect(calls).toBe(6);
    expect(heldByThisProcess()).toEqual({ programs: [], maps: [] });
    const symbols = (hook: string) => r.stacks.filter((s) => s.hook === hook).map((s) => s.frames.map((f) => f.symbol));
    expect(r.stacks.length).toBeGreaterThan(0);
    for (const [i, s] of r.stacks.entries()) if (i > 0) expect(s.count).toBeLessThanOrEqual(r.stacks[i - 1]!.count);
    if (r.mode === 'tracepoint') {
      const enter = symbols('syscalls:sys_enter_chroot');
      expect(enter.some((f) => f.includes('do_syscall_64') || f.length === 0)).toBe(true);
      expect(r.stacks.filter((s) => s.hook === 'syscalls:sys_enter_chroot').reduce((n, s) => n + s.count, 0)).toBeGreaterThanOrEqual(6);
    } else {
      // fentry or kprobe: through security_path_chroot ← __x64_sys_chroot ← do_syscall_64.
      const lsm = symbols('security_path_chroot');
      expect(lsm.length).toBeGreaterThan(0);
      const path = lsm.find((f) => f.includes('__x64_sys_chroot'))!;
      expect(path).toBeDefined();
      expect(path.indexOf('__x64_sys_chroot')).toBeLessThan(path.indexOf('do_syscall_64'));
      if (path.includes('security_path_chroot')) expect(path.indexOf('security_path_chroot')).toBeLessThan(path.indexOf('__x64_sys_chroot'));
    }
  });

  it('counts stacks in every mode this kernel allows, at that mode\'s hooks', async () => {
    const report = await doctor();
    const allowed = report.modes.filter((m) => m.ok).map((m) => m.mode);
    expect(allowed.length).toBeGreaterThan(0);
    const hooksOf: Record<string, string[]> = {
      tracepoint: ['syscalls:sys_enter_chroot', 'syscalls:sys_exit_chroot'],
      kprobe: ['__x64_sys_chroot', 'security_path_chroot'],
      fentry: ['__x64_sys_chroot', 'security_path_chroot'],
    };
    for (const mode of allowed) {
      const done = new AbortController();
      const r = await countStacks({
        mode,
        durationMs: 60_000,
        signal: done.signal,
        onAttach: () => void runStep(['chroot', '/nonexistent-stacks-mode', '/bin/true']).then(() => done.abort()),
      });
      expect(r.mode).toBe(mode);
      for (const hook of hooksOf[mode]!) expect(r.hooks, mode).toContain(hook);
      expect(r.stacks.length, mode).toBeGreaterThan(0);
      const symbolized = r.stacks.some((s) => s.frames.some((f) => f.symbol === 'do_syscall_64'));
      // Kernels that give syscall tracepoints user-mode registers (6.1) count
      // the hits with no frames; kprobe and fentry always have a stack.
      if (mode === 'tracepoint' && !symbolized) expect(r.stacks.every((s) => s.frames.length === 0), mode).toBe(true);
      else expect(symbolized, mode).toBe(true);
    }
    expect(heldByThisProcess()).toEqual({ programs: [], maps: [] });
  });

  it('chroot-guard stacks prints bpftrace-style stacks, most frequent first', async () => {
    const child = spawn(process.execPath, [CLI, 'stacks', '--duration', '60'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    await new Promise<void>((resolve, reject) => {
      child.stderr.on('data', (d: Buffer) => d.toString().includes('counting kernel stacks') && resolve());
      child.on('exit', (code) => reject(new Error(`stacks exited early with ${code}`)));
    });
    await runStep(['chroot', '/nonexistent-stacks-cli', '/bin/true']);
    await runStep(['chroot', '/nonexistent-stacks-cli', '/bin/true']);
    child.kill('SIGINT'); // stops counting early; the counts so far are printed
    const code = await new Promise((r) => child.on('exit', r));
    expect(code).toBe(0);
    expect(stdout).toMatch(/^@\[(syscalls:sys_enter_chroot|__x64_sys_chroot|security_path_chroot|bpf_lsm_path_chroot),\n(    \S+\n)+\]: \d+/m);
    expect(stdout).toContain('do_syscall_64');
    expect(heldByThisProcess()).toEqual({ programs: [], maps: [] });
  });
});
