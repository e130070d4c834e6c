/**
 * The `chroot-guard` CLI as users run it: the built `dist/cli.js`, real
 * kernel, real chroot calls, real signals.
 */
import { spawn, spawnSync } from 'node:child_process';
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeBusyboxRoot, runStep, type BusyboxRoot } from '../ts/demo.js';
import { sleep, TEST_MODE } from './helpers.js';

const CLI = fileURLToPath(new URL('../dist/cli.js', import.meta.url));
let root: BusyboxRoot;
let rootPath: string;
beforeAll(() => {
  root = makeBusyboxRoot();
  rootPath = realpathSync(root.dir);
});
afterAll(() => root.remove());

function cli(args: string[], prefix: string[] = []) {
  const argv = [...prefix, process.execPath, CLI, ...args];
  return spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8', timeout: 60_000 });
}

/** Starts `chroot-guard watch ARGS` and resolves once it says it is watching. */
function startWatch(args: string[]) {
  const child = spawn(process.execPath, [CLI, 'watch', '--mode', TEST_MODE, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  const ready = new Promise<void>((resolve, reject) => {
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
      if (stderr.includes('watching chroot(2)')) resolve();
    });
    child.on('exit', (code) => reject(new Error(`watch exited early with ${code}: ${stderr}`)));
  });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return { child, ready, exited, out: () => stdout, err: () => stderr };
}

describe('chroot-guard watch', () => {
  it('--json prints one object per call with the documented keys, and Ctrl-C detaches cleanly', async () => {
    const w = startWatch(['--json']);
    await w.ready;
    const ok = await runStep(['chroot', rootPath, '/bin/true']);
    const missing = await runStep(['chroot', '/nonexistent-cli-test', '/bin/true']);
    const deadline = Date.now() + 5000;
    while (!(w.out().includes(`"pid":${ok.pid},`) && w.out().includes(`"pid":${missing.pid},`)) && Date.now() < deadline) await sleep(20);
    w.child.kill('SIGINT');
    expect(await w.exited).toBe(0);
    const lines = w.out().trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    const byPid = (pid: number) => lines.filter((l) => l.pid === pid);
    expect(byPid(ok.pid)).toHaveLength(1);
    expect(byPid(missing.pid)).toHaveLength(1);
    const e = byPid(ok.pid)[0]!;
    for (const k of ['ts', 'pid', 'tid', 'ppid', 'uid', 'gid', 'comm', 'path', 'resolvedPath', 'ret', 'errno', 'probe']) expect(e).toHaveProperty(k);
    expect(e).toMatchObject({ comm: 'chroot', path: rootPath, resolvedPath: rootPath, ret: 0, errno: null });
    expect(typeof e.ts).toBe('number');
    expect(byPid(missing.pid)[0]).toMatchObject({ ret: -2, errno: 'ENOENT', resolvedPath: null });
    expect(w.err()).toMatch(/detached: \d+ events?/);
  });

  it('prints a readable table, filtered by --pid', async () => {
    const idle = spawn('sh', ['-c', `read go; exec chroot ${rootPath} /bin/true`], { stdio: ['pipe', 'ignore', 'ignore'] });
    const w = startWatch(['--pid', String(idle.pid)]);
    await w.ready;
    idle.stdin.end('go\n');
    const other = await runStep(['chroot', rootPath, '/bin/true']);
    const deadline = Date.now() + 8000;
    while (!w.out().includes(` ${idle.pid} `) && Date.now() < deadline) await sleep(20);
    w.child.kill('SIGTERM');
    expect(await w.exited).toBe(0);
    const [header, ...rows] = w.out().trimEnd().split('\n');
    expect(header).toMatch(/^TIME\s+PID\s+COMM\s+UID\s+RESULT\s+PATH → RESOLVED$/);
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatch(new RegExp(`^\\d\\d:\\d\\d:\\d\\d\\.\\d{3}\\s+${idle.pid}\\s+chroot\\s+0\\s+ok\\s+${rootPath} → ${rootPath}$`));
    expect(w.out()).not.toContain(` ${other.pid} `);
  });

  it('says what it needs and exits 4 without privileges', () => {
    const r = cli(['watch'], ['setpriv', '--bounding-set=-all', '--inh-caps=-all']);
    expect(r.status).toBe(4);
    expect(r.stderr).toContain('missing privileges');
    expect(r.stderr).toContain('run as root');
    expect(r.stdout).toBe('');
  });

  it('rejects bad usage with exit 2', () => {
    for (const args of [['watch', '--pid', 'abc'], ['watch', '--mode', 'uprobe'], ['watch', '--bogus'], ['nonsense']]) {
      const r = cli(args);
      expect(r.status, args.join(' ')).toBe(2);
      expect(r.stderr.length).toBeGreaterThan(0);
    }
    const r = cli(['watch', '--comm', 'a-name-longer-than-15']);
    expect(r.status).toBe(2);
    expect(r.stderr).toContain('comm must be 1 to 15 bytes');
  });

  it('documents options and exit codes in --help', () => {
    const r = cli(['watch', '--help']);
    expect(r.status).toBe(0);
    for (const s of ['--json', '--mode', '--pid', '--uid', '--comm', 'Exit codes', 'missing privileges']) expect(r.stdout).toContain(s);
  });
});

describe('chroot-guard demo', () => {
  it('sees every call of the built-in workload with the right pid, path and result', () => {
    const r = cli(['demo', '--mode', TEST_MODE, '--json']);
    expect(r.stderr).not.toContain('NOT SEEN');
    expect(r.status).toBe(0);
    expect(r.stderr.match(/✓/g)).toHaveLength(6);
    const events = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as { errno: string | null });
    expect(events.map((e) => e.errno)).toEqual(expect.arrayContaining([null, 'ENOENT', 'ENOTDIR', 'EPERM']));
  });
});
