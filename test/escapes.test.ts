/**
 * Chroot escapes: a jailed process with CAP_SYS_CHROOT gets its root back
 * (test/attacks/chroot_escape.c): the classic escape (chroot into a
 * subdirectory without a chdir, climb out with `chdir("..")`,
 * `chroot(".")`), a directory fd kept from before the jail, and one
 * received over a unix socket (SCM_RIGHTS). Each runs for real, as root
 * and as an unprivileged user inside `unshare -Urm` (root of a user
 * namespace of its own: CAP_SYS_CHROOT there).
 *
 * Watched (every attach mode: the host's tracepoints, the VM's fentry,
 * kprobe and tracepoint), each escape succeeds and its escaping call
 * carries `escapesRoot: true`, the classic escape's first chroot
 * `cwdOutsideRoot: true`; the legitimate flows (chroot(8), a nested
 * chroot(8) inside a busybox root, debootstrap-style `chroot DIR cmd`
 * sequences, `chroot(".")` after a chdir into a subdirectory) never carry
 * `escapesRoot: true`. Guarded by examples/no-escape.yaml (where the BPF
 * LSM runs: the VM, once, in `auto`), each escaping call fails with EPERM
 * and the process's root stays its jail, and the legitimate flows pass.
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, realpathSync, rmSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadPolicy, type ChrootDecision, type ChrootEvent } from '../ts/index.js';
import { makeBusyboxRoot, type BusyboxRoot } from '../ts/demo.js';
import { compileC, guarded, NOBODY, record, TEST_MODE, type Guarded, type Recorder } from './helpers.js';
import { LSM, lsmTitle } from './lsm.js';

/** The forced-mode reruns in the VM repeat only what depends on the watch mode. */
const RERUN = TEST_MODE !== 'auto';

const ESCAPES = ['classic', 'kept_fd', 'socket_fd'] as const;
type Escape = (typeof ESCAPES)[number];
type Attacker = 'root' | 'user';

/** What test/attacks/chroot_escape.c reports. */
interface Run {
  readonly pid: number;
  readonly results: readonly string[];
  /** `DEV:INO` of the process's root at the end. */
  readonly root: string;
}

let dir: string;
let jail: string;
let program: string;
let busybox: BusyboxRoot;

beforeAll(() => {
  // World-readable, so the unprivileged runs reach the program and the jails.
  dir = mkdtempSync('/tmp/cg-escapes-');
  chmodSync(dir, 0o755);
  jail = realpathSync(dir) + '/jail';
  mkdirSync(`${jail}/sub`, { recursive: true, mode: 0o755 });
  program = `${dir}/chroot_escape`;
  compileC('test/attacks/chroot_escape.c', program);
  busybox = makeBusyboxRoot(dir);
  // debootstrap-style steps write into the root; the user's too.
  chmodSync(`${busybox.dir}/tmp`, 0o1777);
});

afterAll(() => {
  busybox?.remove();
  rmSync(dir, { recursive: true, force: true });
});

/** `DEV:INO` of a path, as the program prints its root. */
const id = (path: string) => {
  const s = statSync(path);
  return `${s.dev}:${s.ino}`;
};

/** argv as root, or as nobody inside `unshare -Urm`. */
const as = (who: Attacker, argv: string[]) => (who === 'root' ? argv : ['setpriv', `--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', 'unshare', '-Urm', ...argv]);

/** Runs one mode of the program against the jail. */
function run(who: Attacker, mode: Escape | 'subdir'): Run {
  const [cmd, ...args] = as(who, [program, mode, jail]);
  const r = spawnSync(cmd!, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${mode} as ${who} exited with ${r.status}: ${r.stderr}`);
  return JSON.parse(r.stdout) as Run;
}

/**
 * The legitimate flows, each run to completion (exit 0): the pids that
 * called chroot(2), and how many calls each made. chroot(8) execs its
 * command in the same process, so a nested chroot(8) is one pid, two calls.
 */
function legitimate(who: Attacker): Array<{ what: string; pid: number; calls: number }> {
  const root = busybox.dir;
  const step = (what: string, argv: string[], calls = 1) => {
    const [cmd, ...args] = as(who, argv);
    const r = spawnSync(cmd!, args, { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`${what} as ${who} exited with ${r.status}: ${r.stderr}`);
    return { what, pid: r.pid!, calls };
  };
  return [
    step('chroot(8)', ['/usr/sbin/chroot', root, '/bin/true']),
    step('nested chroot(8)', ['/usr/sbin/chroot', root, '/bin/chroot', '/inner', '/bin/true'], 2),
    // debootstrap's way: one `chroot DIR cmd` per step, each a new process.
    step('debootstrap-style step 1', ['/usr/sbin/chroot', root, '/bin/sh', '-c', `echo configured > /tmp/stamp-${who}`]),
    step('debootstrap-style step 2', ['/usr/sbin/chroot', root, '/bin/ls', '/tmp']),
    step('debootstrap-style step 3', ['/usr/sbin/chroot', root, '/bin/cat', `/tmp/stamp-${who}`]),
    { what: 'chroot(".") in a subdirectory', pid: run(who, 'subdir').pid, calls: 2 },
  ];
}

/** The escaping call's index in a mode's calls, and the jail its root stays in when that call is denied. */
const escaping = (mode: Escape) => (mode === 'classic' ? { at: 2, stays: () => `${jail}/sub` } : { at: 1, stays: () => jail });

const facts = (e: ChrootEvent | ChrootDecision) => ({ path: e.path, escapesRoot: e.escapesRoot, cwdOutsideRoot: e.cwdOutsideRoot });

describe(`watch: the escape facts (${TEST_MODE})`, () => {
  let rec: Recorder;
  beforeAll(async () => {
    rec = await record();
  });
  afterAll(() => rec?.stop());

  /** The events of `pid`, at least `n`, oldest first. */
  const eventsOf = async (pid: number, n: number) => {
    await rec.until(() => rec.of(pid).length >= n);
    return rec.of(pid).sort((a, b) => (a.ts < b.ts ? -1 : 1));
  };

  for (const who of ['root', 'user'] as const) {
    it(`as ${who}: the classic escape gets out; its chroot into the subdirectory leaves the cwd outside, its chroot(".") escapes`, async () => {
      const r = run(who, 'classic');
      expect(r.results).toEqual(['ok', 'ok', 'ok']);
      expect(r.root).toBe(id('/')); // out: the real root (in the user's case, its namespace's copy of it)
      const [jailed, sub, out] = await eventsOf(r.pid, 3);
      // chroot(JAIL) from the test's cwd leaves the cwd outside too, until the program's chdir("/").
      expect(facts(jailed!)).toEqual({ path: jail, escapesRoot: false, cwdOutsideRoot: true });
      expect(facts(sub!)).toEqual({ path: 'sub', escapesRoot: false, cwdOutsideRoot: true });
      expect(facts(out!)).toEqual({ path: '.', escapesRoot: true, cwdOutsideRoot: false });
      expect(out).toMatchObject({ resolvedPath: '/', callerChrooted: true, ret: 0 });
    });

    for (const mode of ['kept_fd', 'socket_fd'] as const) {
      it(`as ${who}: ${mode} gets out, and its chroot(".") escapes`, async () => {
        const r = run(who, mode);
        expect(r.results).toEqual(['ok', 'ok']);
        expect(r.root).toBe(id('/'));
        const [jailed, out] = await eventsOf(r.pid, 2);
        expect(facts(jailed!)).toEqual({ path: jail, escapesRoot: false, cwdOutsideRoot: true });
        expect(facts(out!)).toEqual({ path: '.', escapesRoot: true, cwdOutsideRoot: false });
      });
    }

    it(`as ${who}: chroot(8), a nested chroot(8), debootstrap-style steps and chroot(".") in a subdirectory never escape`, async () => {
      for (const { what, pid, calls } of legitimate(who)) {
        const events = await eventsOf(pid, calls);
        expect(events.map((e) => [e.errno, e.escapesRoot]), what).toEqual(Array.from({ length: calls }, () => [null, false]));
      }
    });
  }

  it('a call that never reaches a new root carries no escape facts (null, not false)', async () => {
    const r = spawnSync('/usr/sbin/chroot', [`${jail}/missing`, '/bin/true']);
    const [e] = await eventsOf(r.pid!, 1);
    expect(e).toMatchObject({ errno: 'ENOENT', resolvedPath: null, escapesRoot: null, cwdOutsideRoot: null });
  });
});

describe.skipIf(!LSM || RERUN)(lsmTitle(RERUN ? 'guard: examples/no-escape.yaml (in auto only: the guard does not depend on the watch mode)' : 'guard: examples/no-escape.yaml'), () => {
  let g: Guarded;
  beforeAll(async () => {
    g = await guarded(loadPolicy(fileURLToPath(new URL('../examples/no-escape.yaml', import.meta.url))));
  });
  afterAll(() => g?.guard.stop());

  for (const who of ['root', 'user'] as const) {
    for (const mode of ESCAPES) {
      it(`as ${who}: ${mode}: the escaping chroot fails with EPERM and the process stays in its jail`, async () => {
        const r = run(who, mode);
        const { at, stays } = escaping(mode);
        expect(r.results).toEqual([...Array.from({ length: at }, () => 'ok'), 'EPERM']);
        expect(r.root).toBe(id(stays()));
        const decisions = await g.decisionsOf(r.pid, at + 1);
        expect(decisions).toHaveLength(at + 1);
        expect(decisions[at]).toMatchObject({ ruleId: 'no-escape', action: 'deny', denied: true, escapesRoot: true, cwdOutsideRoot: false, uid: who === 'root' ? 0 : NOBODY });
        expect(decisions.slice(0, at).map((d) => [d.denied, d.escapesRoot])).toEqual(Array.from({ length: at }, () => [false, false]));
        if (mode === 'classic') expect(decisions[1]).toMatchObject({ path: 'sub', cwdOutsideRoot: true, ruleId: null });
      });
    }

    it(`as ${who}: the legitimate flows all pass, none decided an escape`, async () => {
      for (const { what, pid, calls } of legitimate(who)) {
        const decisions = await g.decisionsOf(pid, calls);
        expect(decisions.map((d) => [d.denied, d.ruleId, d.escapesRoot]), what).toEqual(Array.from({ length: calls }, () => [false, null, false]));
      }
    });
  }
});
