/**
 * Lifecycle in child processes and worker threads: the threadsafe function
 * must not keep Node alive after the last unsubscribe, a worker that ends
 * must detach, and missing privileges reach the error channel without a
 * crash. Uses the built package (dist/), as users do.
 */
import { spawn, spawnSync } from 'node:child_process';
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeBusyboxRoot, type BusyboxRoot } from '../ts/demo.js';
import { SLOWDOWN } from './helpers.js';

const DIST = fileURLToPath(new URL('../dist/index.js', import.meta.url));
let root: BusyboxRoot;
let rootPath: string;
beforeAll(() => {
  root = makeBusyboxRoot();
  rootPath = realpathSync(root.dir);
});
afterAll(() => root.remove());

/** Runs an ES module script in a fresh node; returns exit code, output and wall time. */
function node(script: string, opts: { prefix?: string[]; timeoutMs?: number } = {}) {
  const started = Date.now();
  const argv = [...(opts.prefix ?? []), process.execPath, '--input-type=module', '-e', script];
  const r = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8', timeout: opts.timeoutMs ?? 30_000 });
  if (process.env.CG_DEBUG) console.log(r.stdout, r.stderr);
  return { code: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr, ms: Date.now() - started };
}

describe('in a child process', () => {
  it('exits by itself after the last unsubscribe (the callback does not keep Node alive)', () => {
    const r = node(`
      import { chrootWatch } from ${JSON.stringify(DIST)};
      import { execFileSync } from 'node:child_process';
      const sub = chrootWatch({ onAttach: () => {
        execFileSync('chroot', [${JSON.stringify(rootPath)}, '/bin/true']);
      } }).subscribe((e) => {
        if (e.path === ${JSON.stringify(rootPath)}) { console.log('event', e.pid); sub.unsubscribe(); }
      });
    `);
    expect(r.stderr).toBe('');
    expect(r.signal).toBeNull(); // not killed by the timeout
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^event \d+/);
  });

  // The child can exit only once the guard's load returns: a program in
  // the verifier cannot be called back, and verifying the LSM program takes
  // 20–30 s under the VM's TCG. The bound catches a child that never exits.
  it('exits by itself when unsubscribed while still attaching (watch and guard)', { timeout: 200_000 }, () => {
    const r = node(`
      import { chrootWatch, chrootGuard } from ${JSON.stringify(DIST)};
      chrootWatch().subscribe().unsubscribe();
      const g = chrootGuard({ mode: 'audit', rules: [] });
      g.ready.catch(() => {});
      g.stop();
      console.log('done');
    `, { timeoutMs: 180_000 });
    expect(r.signal).toBeNull(); // not killed by the timeout: nothing kept Node alive
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe('done');
  });

  it('keeps Node alive while subscribed', async () => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', `
      import { chrootWatch } from ${JSON.stringify(DIST)};
      chrootWatch({ onAttach: () => console.log('attached') }).subscribe();
    `], { stdio: ['ignore', 'pipe', 'inherit'] });
    const exited = new Promise<NodeJS.Signals | null>((r) => child.on('exit', (_code, signal) => r(signal)));
    await new Promise<void>((resolve) => child.stdout.on('data', (d: Buffer) => d.toString().includes('attached') && resolve()));
    await new Promise((r) => setTimeout(r, 1000));
    expect(child.exitCode).toBeNull(); // nothing left to do but the subscription: still running
    child.kill('SIGTERM');
    expect(await exited).toBe('SIGTERM');
  });

  it('survives unsubscribing in the middle of a burst of chroot calls', () => {
    const r = node(`
      import { chrootWatch } from ${JSON.stringify(DIST)};
      import { spawn } from 'node:child_process';
      let n = 0;
      // The burst starts once the probes are attached: started before, it
      // can end before they are, and the subscription (rightly) lives on.
      const sub = chrootWatch({ onAttach: () => {
        const burst = spawn('sh', ['-c', 'i=0; while [ $i -lt 300 ]; do chroot /nonexistent-burst /bin/true 2>/dev/null; i=$((i+1)); done']);
        burst.on('close', () => console.log('burst done, saw', n));
      } }).subscribe(() => { if (++n === 20) sub.unsubscribe(); });
    `, { timeoutMs: 50_000 * SLOWDOWN }); // 300 fork+exec take 18 to 35 s under TCG in the VM
    expect(r.signal).toBeNull(); // not killed by the timeout
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/burst done, saw 20\b/);
  });

  it('reports missing privileges on the error channel as EPERM, without crashing', () => {
    // Root without any capability: the bounding set is emptied before exec.
    const r = node(`
      import { chrootWatch } from ${JSON.stringify(DIST)};
      chrootWatch().subscribe({ error: (e) => console.log(JSON.stringify({ name: e.name, code: e.code, message: e.message })) });
    `, { prefix: ['setpriv', '--bounding-set=-all', '--inh-caps=-all'] });
    expect(r.code).toBe(0);
    const err = JSON.parse(r.stdout) as { name: string; code: string; message: string };
    expect(err).toMatchObject({ name: 'ChrootGuardError', code: 'EPERM' });
    expect(err.message).toContain('CAP_BPF');
    expect(err.message).toContain('run as root');
  });

  it('reports missing privileges as EPERM for a process that dropped to uid 65534', () => {
    const r = node(`
      import { chrootWatch } from ${JSON.stringify(DIST)};
      process.setgid(65534); process.setuid(65534);
      chrootWatch().subscribe({ error: (e) => console.log(e.code, e.message) });
    `);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^EPERM missing privileges \(euid 65534 lacks CAP_BPF and CAP_PERFMON\)/);
  });
});

describe('in a worker thread', () => {
  const worker = (body: string) => `
    import { Worker } from 'node:worker_threads';
    const w = new Worker(${JSON.stringify(`(async () => {
      const { parentPort } = require('node:worker_threads');
      const { chrootWatch } = await import(${JSON.stringify(DIST)});
      ${body}
    })()`)}, { eval: true, execArgv: [] });
    w.on('message', (m) => console.log(m));
    w.on('error', (e) => { console.log('worker error', e.message); process.exitCode = 1; });
    w.on('exit', (c) => console.log('worker exit', c));
  `;

  it('receives events, unsubscribes, and the worker ends by itself', () => {
    // Its own call only: other processes on the host may chroot meanwhile.
    const r = node(worker(`
      const { execFileSync } = require('node:child_process');
      const sub = chrootWatch({ onAttach: () => execFileSync('chroot', [${JSON.stringify(rootPath)}, '/bin/true']) })
        .subscribe((e) => { if (e.path !== ${JSON.stringify(rootPath)}) return; parentPort.postMessage('event ' + e.path); sub.unsubscribe(); });
    `));
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`event ${rootPath}`);
    expect(r.stdout).toContain('worker exit 0');
  });

  it('detaches when the worker is terminated while subscribed', () => {
    const r = node(`
      import { Worker } from 'node:worker_threads';
      import { readdirSync, readFileSync } from 'node:fs';
      const w = new Worker(${JSON.stringify(`(async () => {
        const { parentPort } = require('node:worker_threads');
        const { chrootWatch } = await import(${JSON.stringify(DIST)});
        chrootWatch({ onAttach: () => parentPort.postMessage('attached') }).subscribe();
      })()`)}, { eval: true, execArgv: [] });
      // BPF objects this process holds: prog_id/map_id lines in its fdinfo.
      const held = () => readdirSync('/proc/self/fdinfo').filter((fd) => {
        try { return /^(prog_id|map_id):/m.test(readFileSync('/proc/self/fdinfo/' + fd, 'utf8')); } catch { return false; }
      }).length;
      w.on('message', async () => {
        const before = held() > 0;
        await w.terminate();
        const after = held() > 0;
        console.log(JSON.stringify({ before, after }));
      });
    `);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ before: true, after: false });
  });
});
