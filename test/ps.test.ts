/**
 * `chrootedTasks()` and `chroot-guard ps` against the real kernel:
 * processes this test chroots itself (test/callers/chroot_hold.c), listed
 * by the task iterator and by the /proc scan, field by field, and the two
 * sources held to the same answers.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chrootedTasks, type ChrootedTask, type PsResult } from '../ts/index.js';
import { cgroup2Mount, cli, compileC, heldByThisProcess, ndjson, removeCgroupDir } from './helpers.js';

interface Held {
  child: ChildProcess;
  pid: number;
  ppid: number;
  root: Buffer;
  cwd: Buffer;
  cwdOutsideRoot: boolean;
}

const base = mkdtempSync('/tmp/cg-ps-');
const helper = `${base}/chroot_hold`;
const held: Record<'plain' | 'odd' | 'outside' | 'ns' | 'lazy', Held> = {} as never;
const children: ChildProcess[] = [];
let unsharePid = 0;

/** Spawns `argv` and resolves with the child once it printed "ready". */
function start(argv: string[], cwd = base): Promise<ChildProcess> {
  const child = spawn(argv[0]!, argv.slice(1), { cwd, stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  return new Promise((resolve, reject) => {
    child.stdout!.on('data', (d: Buffer) => d.toString().includes('ready') && resolve(child));
    child.on('exit', (code) => reject(new Error(`${argv.join(' ')} exited with ${code}`)));
  });
}

const hex = (b: Buffer) => b.toString('hex');

beforeAll(async () => {
  compileC('test/callers/chroot_hold.c', helper);
  const dir = (name: string | Buffer) => {
    const p = Buffer.concat([Buffer.from(`${base}/`), Buffer.from(name)]);
    mkdirSync(p);
    return p;
  };
  const plain = dir('plain');
  const odd = dir(Buffer.from([0x6f, 0x64, 0x64, 0xff, 0xfe, 0x5c, 0x0a]));
  const ns = dir('ns');
  const lazySrc = dir('lazy-src');
  const lazy = dir('lazy');
  const me = process.pid;
  const c1 = await start([helper, hex(plain)]);
  held.plain = { child: c1, pid: c1.pid!, ppid: me, root: plain, cwd: plain, cwdOutsideRoot: false };
  const c2 = await start([helper, hex(odd)]);
  held.odd = { child: c2, pid: c2.pid!, ppid: me, root: odd, cwd: odd, cwdOutsideRoot: false };
  const c3 = await start([helper, hex(plain), 'stay']);
  held.outside = { child: c3, pid: c3.pid!, ppid: me, root: plain, cwd: Buffer.from(base), cwdOutsideRoot: true };
  // Another pid, user and mount namespace: unshare forks, its child chroots.
  const c4 = await start(['unshare', '-Urmpf', '--mount-proc', helper, hex(ns)]);
  unsharePid = c4.pid!;
  const inner = Number(readFileSync(`/proc/${unsharePid}/task/${unsharePid}/children`, 'utf8').trim().split(/\s+/)[0]);
  held.ns = { child: c4, pid: inner, ppid: unsharePid, root: ns, cwd: ns, cwdOutsideRoot: false };
  // A root whose mount is lazily unmounted: detached, reachable from nowhere.
  execFileSync('mount', ['--bind', lazySrc.toString(), lazy.toString()]);
  const c5 = await start([helper, hex(lazy)]);
  execFileSync('umount', ['-l', lazy.toString()]);
  held.lazy = { child: c5, pid: c5.pid!, ppid: me, root: Buffer.from('/'), cwd: Buffer.from('/'), cwdOutsideRoot: false };
}, 60_000);

afterAll(() => {
  // unshare's child, pid 1 of its own pid namespace, outlives unshare: it
  // goes first, so that unshare, still alive, reaps it.
  if (held.ns) process.kill(held.ns.pid, 'SIGKILL');
  for (const c of children) if (c !== held.ns?.child) c.kill('SIGKILL'); // unshare exits once its child is gone
  rmSync(base, { recursive: true, force: true });
});

function expectHeld(r: PsResult) {
  const byPid = new Map(r.tasks.map((t) => [t.pid, t]));
  for (const [name, h] of Object.entries(held)) {
    const t = byPid.get(h.pid);
    expect(t, `${name} (pid ${h.pid}) is listed`).toBeDefined();
    expect({ name, ppid: t!.ppid, uid: t!.uid, comm: t!.comm, root: hex(t!.rootBytes), cwd: t!.cwdBytes && hex(t!.cwdBytes), cwdOutsideRoot: t!.cwdOutsideRoot, exe: t!.exe }).toEqual({
      name,
      ppid: h.ppid,
      uid: 0,
      comm: 'chroot_hold',
      root: hex(h.root),
      cwd: hex(h.cwd),
      cwdOutsideRoot: h.cwdOutsideRoot,
      exe: helper,
    });
    expect(t!.rootUnreachable, name).toBe(name === 'lazy');
  }
  expect(byPid.get(held.odd.pid)!.root).toBe(`${base}/odd\\xff\\xfe\\\\\n`);
  // Not chrooted: this process, and unshare (in its own namespaces, at their root).
  expect(byPid.has(process.pid)).toBe(false);
  expect(byPid.has(unsharePid)).toBe(false);
  const myNs = Number(/\[(\d+)\]/.exec(execFileSync('readlink', ['/proc/self/ns/mnt'], { encoding: 'utf8' }))![1]);
  expect(byPid.get(held.ns.pid)!.mntNs).not.toBe(myNs);
  expect(byPid.get(held.plain.pid)!.mntNs).toBe(myNs);
}

describe('ps', () => {
  it('the task iterator lists the processes the test chrooted, with exact fields, and leaves nothing loaded', async (ctx) => {
    const r = await chrootedTasks();
    if (r.source !== 'iterator') {
      console.log(`ps: the kernel refused the task iterator, so /proc was read: ${JSON.stringify(r.iteratorRefusal)}`);
      ctx.skip();
    }
    expect(r.iteratorRefusal).toBeNull();
    expectHeld(r);
    const lazy = r.tasks.find((t) => t.pid === held.lazy.pid)!;
    expect(lazy.cwdUnreachable).toBe(true);
    expect(heldByThisProcess()).toEqual({ programs: [], maps: [] });
  });

  it('the /proc scan lists the same processes with the same fields', async () => {
    const r = await chrootedTasks({ source: 'proc' });
    expect(r.source).toBe('proc');
    expectHeld(r);
  });

  it('both sources agree on every process the test chrooted', async (ctx) => {
    const [a, b] = [await chrootedTasks({ source: 'auto' }), await chrootedTasks({ source: 'proc' })];
    if (a.source !== 'iterator') {
      console.log('ps: no iterator here, nothing to compare');
      ctx.skip();
    }
    const tick = 1e9 / Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }));
    const pick = (t: ChrootedTask) => ({ ...t, startNs: undefined, cwdUnreachable: undefined, cgroupId: b.tasks[0]?.cgroupId === null ? undefined : t.cgroupId });
    for (const h of Object.values(held)) {
      const [x, y] = [a.tasks.find((t) => t.pid === h.pid)!, b.tasks.find((t) => t.pid === h.pid)!];
      expect(pick(x)).toEqual(pick(y));
      expect(Number(x.startNs - y.startNs)).toBeGreaterThanOrEqual(0);
      expect(Number(x.startNs - y.startNs)).toBeLessThan(tick);
    }
  });

  it('chroot-guard ps prints the tree, --json one task record per line, filters, and exits 0; a bad option exits 2', () => {
    const table = cli('ps');
    expect(table.status).toBe(0);
    const line = table.stdout.split('\n').find((l) => l.startsWith(`${held.ns.pid} `));
    expect(line).toContain(`chroot_hold → ${base}/ns  (cwd ${base}/ns, exe ${helper})`);
    const outside = table.stdout.split('\n').find((l) => l.startsWith(`${held.outside.pid} `))!;
    expect(outside).toContain('(outside root)');
    expect(table.stdout).toContain(`${base}/odd\\xff\\xfe\\\\\\x0a`);
    // Every line of the whole listing fits the published schema (ndjson throws otherwise).
    const all = cli('ps', '--json');
    expect(all.status).toBe(0);
    expect(ndjson(all.stdout).length).toBeGreaterThanOrEqual(4);
    const json = cli('ps', '--json', '--pid', String(held.odd.pid));
    expect(json.status).toBe(0);
    const records = ndjson(json.stdout) as unknown as Record<string, unknown>[];
    expect(records).toHaveLength(1);
    expect(records[0]).toMatchObject({ type: 'task', pid: held.odd.pid, comm: 'chroot_hold', rootBase64: held.odd.root.toString('base64'), cwdOutsideRoot: false });
    expect(cli('ps', '--json', '--comm', 'no-such-comm').stdout).toBe('');
    expect(cli('ps', '--source', 'bogus').status).toBe(2);
  });
});

describe('ps container attribution', () => {
  const mount = cgroup2Mount();
  const id = 'feed'.padEnd(64, '5');
  const path = `/chroot-guard-ps-${process.pid}/docker-${id}.scope`;
  let pid = 0;
  let cg: string | undefined;
  beforeAll(async () => {
    if (!mount) return;
    // A chrooted process moved into a cgroup named as Docker's systemd
    // driver names a container's.
    cg = `${mount}${path}`;
    mkdirSync(cg, { recursive: true });
    const plain = Buffer.from(`${base}/plain`);
    pid = (await start([helper, hex(plain)])).pid!;
    writeFileSync(`${cg}/cgroup.procs`, String(pid));
  });
  afterAll(() => {
    if (!cg) return;
    process.kill(pid, 'SIGKILL');
    for (const d of [cg, `${mount}/chroot-guard-ps-${process.pid}`]) removeCgroupDir(d);
  });

  it('both sources give a task its cgroup path and the container it names; the table marks it, --json carries it', async (ctx) => {
    if (!mount) {
      console.log('ps: no cgroup2 file system mounted here: tasks have no cgroup to attribute');
      ctx.skip();
    }
    const want = { cgroupLookup: 'found', cgroupPath: path, containerRuntime: 'docker', containerId: id, podUid: null };
    for (const source of ['auto', 'proc'] as const) {
      const t = (await chrootedTasks({ source })).tasks.find((x) => x.pid === pid);
      expect(t, source).toMatchObject(want);
    }
    // And a process outside any container: found, no container.
    const plain = (await chrootedTasks()).tasks.find((x) => x.pid === held.plain.pid)!;
    expect(plain).toMatchObject({ cgroupLookup: 'found', containerRuntime: null, containerId: null, podUid: null });
    const table = cli('ps', '--pid', String(pid));
    expect(table.status).toBe(0);
    expect(table.stdout.split('\n')[0]).toMatch(/\[CONTAINER\]$/);
    expect(table.stdout.split('\n')[1]).toMatch(new RegExp(`^${pid} .* \\[docker ${id.slice(0, 12)}\\]$`));
    const json = ndjson(cli('ps', '--json', '--pid', String(pid)).stdout) as unknown as Record<string, unknown>[];
    expect(json).toHaveLength(1);
    expect(json[0]).toMatchObject(want);
  });
});
