/**
 * `countStacks()` and `chroot-guard stacks` against the real kernel: the
 * kernel stacks of real chroot calls at each hook of every mode the kernel
 * allows (as `doctor()` finds them), symbolized from /proc/kallsyms.
 */
import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { runStep } from '../ts/demo.js';
import { countStacks, doctor } from '../ts/index.js';
import { CLI, heldByThisProcess } from './helpers.js';

/**
 * This architecture's syscall entry of chroot(2), and the kernel function
 * below it that dispatches every syscall from user space, which each stack
 * of a chroot call passes through (arm64's `invoke_syscall` is inlined
 * into the dispatcher's caller, so its `do_el0_svc` is named).
 */
const [ENTRY, DISPATCH] = ({ x64: ['__x64_sys_chroot', 'do_syscall_64'], arm64: ['__arm64_sys_chroot', 'do_el0_svc'] } as const)[process.arch as 'x64' | 'arm64'];

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
      expect(enter.some((f) => f.includes(DISPATCH) || f.length === 0)).toBe(true);
      expect(r.stacks.filter((s) => s.hook === 'syscalls:sys_enter_chroot').reduce((n, s) => n + s.count, 0)).toBeGreaterThanOrEqual(6);
    } else {
      // fentry or kprobe: through security_path_chroot ← ENTRY ← DISPATCH.
      const lsm = symbols('security_path_chroot');
      expect(lsm.length).toBeGreaterThan(0);
      const path = lsm.find((f) => f.includes(DISPATCH))!;
      expect(path, JSON.stringify(lsm)).toBeDefined();
      // On arm64 the caller of the probed function comes from the link
      // register at the kprobe (crates/common's StackKey): without it the
      // frame-pointer unwinder goes from security_path_chroot+0 straight
      // to invoke_syscall (6.1, kprobe).
      expect(path.indexOf(ENTRY), JSON.stringify(path)).toBeGreaterThanOrEqual(0);
      expect(path.indexOf(ENTRY)).toBeLessThan(path.indexOf(DISPATCH));
      if (path.includes('security_path_chroot')) expect(path.indexOf('security_path_chroot')).toBeLessThan(path.indexOf(ENTRY));
      if (process.arch === 'arm64' && r.mode === 'kprobe') expect(path.slice(0, 2)).toEqual(['security_path_chroot', ENTRY]);
    }
  });

  it('counts stacks in every mode this kernel allows, at that mode\'s hooks', async () => {
    const report = await doctor();
    const allowed = report.modes.filter((m) => m.ok).map((m) => m.mode);
    expect(allowed.length).toBeGreaterThan(0);
    const hooksOf: Record<string, string[]> = {
      tracepoint: ['syscalls:sys_enter_chroot', 'syscalls:sys_exit_chroot'],
      kprobe: [ENTRY, 'security_path_chroot'],
      fentry: [ENTRY, 'security_path_chroot'],
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
      const symbolized = r.stacks.some((s) => s.frames.some((f) => f.symbol === DISPATCH));
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
    expect(stdout).toMatch(new RegExp(`^@\\[(syscalls:sys_enter_chroot|${ENTRY}|security_path_chroot|bpf_lsm_path_chroot),\n(    \\S+\n)+\\]: \\d+`, 'm'));
    expect(stdout).toContain(DISPATCH);
    expect(heldByThisProcess()).toEqual({ programs: [], maps: [] });
  });
});
