/**
 * The guard against callers who reach a directory without naming it by its
 * path in their own mount namespace: detached mounts, clones, fresh mounts,
 * other namespaces' trees, directory fds from elsewhere. Each variant
 * (test/attacks/chroot_via.py) runs for real, as root and as an
 * unprivileged user inside `unshare -Urm` (a user namespace of their own:
 * CAP_SYS_ADMIN over their own mounts and CAP_SYS_CHROOT), against
 * `lsm/path_chroot`. They run where `doctor()` finds the BPF LSM running
 * (test/lsm.ts: the VM); the host refuses it (lockdown), and the watch side of the same walk
 * (`resolvedPathUnreachable`, `callerChrooted`) is tested in every mode,
 * host included, in watch.test.ts.
 */
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync, readFileSync, realpathSync, statSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decisionsLost } from '../ts/batch.js';
import { chrootGuard, type ChrootDecision, type Policy } from '../ts/index.js';
import { attackBench, guarded, preemption, sleep, SLOWDOWN, threadedCalls, UNREACHABLE_VARIANTS, type Attack, type AttackBench, type Guarded } from './helpers.js';
import { LSM, lsmTitle } from './lsm.js';


let bench: AttackBench;
let dir: string;
beforeAll(() => {
  bench = attackBench();
  dir = bench.dir;
});
afterAll(() => bench.remove());
const attack = (...args: Parameters<AttackBench['attack']>) => bench.attack(...args);

describe.skipIf(!LSM)(lsmTitle(`guard: directories reached without their path`), () => {
  let g: Guarded;
  beforeAll(async () => {
    g = await guarded({ mode: 'enforce', default: 'allow', rules: [{ id: 'no-deny', action: 'deny', match: { subtree: `${dir}/deny` } }] });
  });
  afterAll(() => g.guard.stop());

  for (const as of ['root', 'user'] as const) {
    it(`as ${as}: the direct path is denied, a sibling allowed, and the decisions say the paths were reachable`, async () => {
      const denied = attack(as, 'direct', `${dir}/deny/inner`);
      expect(denied.results).toEqual(['EPERM']);
      const allowed = attack(as, 'direct', `${dir}/open`);
      expect(allowed.results).toEqual(['ok']);
      expect((await g.decisionsOf(denied.pid))[0]).toMatchObject({ ruleId: 'no-deny', denied: true, resolvedPath: `${dir}/deny/inner`, resolvedPathUnreachable: false });
      expect((await g.decisionsOf(allowed.pid))[0]).toMatchObject({ ruleId: null, denied: false, resolvedPathUnreachable: false });
    });

    for (const variant of UNREACHABLE_VARIANTS) {
      it(`as ${as}: ${variant} is denied by the deny rule, flagged not reachable`, async () => {
        const a = attack(as, variant, `${dir}/deny`);
        expect(a.results).toEqual(['EPERM']);
        const [d] = await g.decisionsOf(a.pid);
        expect(d).toMatchObject({ ruleId: 'no-deny', action: 'deny', denied: true, reason: 'rule', resolvedPathUnreachable: true, uid: as === 'root' ? 0 : 65534 });
      });
    }
  }

  it('32 threads of an unprivileged user chrooting at once, in and out of the denied subtree: every call decided on its own thread\'s path, every decision reported', async () => {
    // On a preemptible kernel (`cargo xtask test` runs this file so in the VM) the threads
    // also preempt each other inside the program and inside the task
    // storage helper, which up to 6.1 then fails for every other thread on
    // that CPU until the preempted one runs again: the program waits for
    // it, and a decision that still got no memory would deny (a sibling
    // call in `b` would fail).
    const [a, b] = [`${dir}/deny/inner`, `${dir}/open`];
    const [N, K] = [32, 20];
    const { pid, threads } = threadedCalls(bench, N, K, a, b);
    expect(threads).toHaveLength(N);
    const decisions = await g.decisionsOf(pid, N * K * 2);
    // A call into `a` that was allowed: its decision says why (a rule, the
    // default, or failMode after an internal error).
    const allowed = decisions.filter((d) => !d.denied && d.resolvedPath !== b);
    const why = JSON.stringify(allowed.map((d) => ({ tid: d.tid, path: d.resolvedPath, reason: d.reason, error: d.error, ruleId: d.ruleId })));
    for (const t of threads) expect(t, why).toMatchObject({ aOk: 0, aEperm: K, bOk: K, other: 0 });
    expect(decisions).toHaveLength(N * K * 2);
    for (const t of threads) {
      const mine = decisions.filter((d) => d.tid === t.tid);
      expect(mine.map((d) => [d.resolvedPath, d.denied, d.ruleId])).toEqual(
        Array.from({ length: 2 * K }, (_, i) => (i % 2 === 0 ? [a, true, 'no-deny'] : [b, false, null])),
      );
    }
    expect(g.guard.stats().lsmErrors).toBe(0);
  }, 180_000);

  it('threads on one CPU beside SCHED_IDLE threads chrooting without pause: no call into the denied subtree succeeds, and a call decided without memory is denied', async () => {
    // An idle thread preempted while it holds something every decision on
    // that CPU needs (up to 6.1, task storage's busy mark) runs again only
    // when nothing else on the CPU wants to: the other threads' decisions
    // wait for it, and one that gives up has no memory to decide with.
    // Whatever failMode says (allow here, the default action), that is a
    // deny: a call in `b` may then fail, a call in `a` never succeeds.
    // Few busy threads: the kernel's RCU, which a preempted idle thread
    // holds up too, reports a stall (and `cargo xtask test` panics) once
    // they starve it for 21 s.
    //
    // Where the helper try-locks its mark (up to 6.1) under full
    // preemption, rounds run until one call was decided without memory, so
    // the rule is shown exercised, not only unbroken; elsewhere the attack
    // cannot hold the mark and one round shows nothing gets through.
    const [a, b] = [`${dir}/deny/inner`, `${dir}/open`];
    const [N, K] = [4, 400];
    const reachable = storageTryLocks() && preemption() === 'full';
    let failedTotal = 0;
    for (let round = 1; round <= (reachable ? 8 : 1) && failedTotal === 0; round++) {
      const before = g.guard.stats().lsmErrors;
      const { pid, idlePid, threads } = threadedCalls(bench, N, K, a, b, 'starve');
      g.ignore(idlePid!);
      expect(threads).toHaveLength(N);
      // The calls' results are the truth; the decisions say why. Allow
      // records give way to deny records once the ring buffer is half full,
      // as the idle threads' flood makes it, so only the denials are awaited.
      for (const t of threads) expect(t).toMatchObject({ aOk: 0, aEperm: K });
      const bFailed = threads.reduce((n, t) => n + t.other, 0);
      const deadline = Date.now() + 60_000 * SLOWDOWN;
      let denied = (await g.decisionsOf(pid, 0)).filter((d) => d.denied);
      while (denied.length < N * K + bFailed && Date.now() < deadline) {
        await sleep(100);
        denied = (await g.decisionsOf(pid, 0)).filter((d) => d.denied);
      }
      const failed = denied.filter((d) => d.reason === 'internal-error');
      console.log(`round ${round}: ${N} threads beside ${N} at SCHED_IDLE: ${2 * N * K} calls, ${failed.length} decided without per-thread memory (denied; ${bFailed} of them calls in the allowed directory), lsmErrors +${g.guard.stats().lsmErrors - before}`);
      expect(denied).toHaveLength(N * K + bFailed);
      expect(failed.filter((d) => d.error !== 'ENOMEM' || d.action !== 'deny')).toEqual([]);
      // Every call in `a` denied by the rule or without memory; every failed
      // call in `b` without memory.
      expect(denied.filter((d) => d.reason !== 'internal-error' && d.ruleId !== 'no-deny')).toEqual([]);
      expect(denied.filter((d) => d.ruleId === 'no-deny')).toHaveLength(N * K - (failed.length - bFailed));
      for (const t of threads) expect(t.bOk + t.other).toBe(K);
      failedTotal += failed.length;
    }
    if (reachable) expect(failedTotal, 'no round held the busy mark past the wait: the rule went unexercised').toBeGreaterThan(0);
    else console.log('no call can be decided without memory here: task storage takes its busy mark unconditionally (bpf_task_storage_get_recur), or the kernel does not preempt the helper');
  }, 300_000);
});

// Each with a guard of its own: with the subtree guard above still attached,
// its deny rule would decide every unreachable path first.
describe.skipIf(!LSM)(lsmTitle(`guard: the caller's root and namespaces`), () => {
  it('a caller whose root lies in a detached tree counts as chrooted (the kernel\'s notion)', async () => {
    const nested = await guarded({ mode: 'enforce', rules: [{ id: 'no-nesting', action: 'deny', match: { alreadyChrooted: true } }] });
    try {
      for (const as of ['root', 'user'] as const) {
        const a = attack(as, 'root_detached', `${dir}/open`);
        expect(a.results, as).toEqual(['ok', 'EPERM']);
        const [first, second] = await nested.decisionsOf(a.pid, 2);
        expect(first).toMatchObject({ callerChrooted: false, resolvedPathUnreachable: true, ruleId: null });
        expect(second).toMatchObject({ callerChrooted: true, ruleId: 'no-nesting', denied: true });
      }
    } finally {
      nested.guard.stop();
    }
  });

  it('exe matches the file, not its path: a copy bind-mounted over the allowed executable in a user namespace gets no pass', async () => {
    const python = realpathSync('/usr/bin/python3');
    const copy = `${dir}/python-copy`;
    copyFileSync(python, copy);
    chmodSync(copy, 0o755);
    const g2 = await guarded({ mode: 'enforce', default: 'deny', rules: [{ id: 'python', action: 'allow', match: { exe: python } }] });
    try {
      const real = attack('root', 'direct', `${dir}/open`);
      expect(real.results).toEqual(['ok']);
      // The user's own copy, shown at the allowed path by a bind mount in its namespace.
      const script = `mount --bind ${copy} ${python} && exec ${python} ${dir}/chroot_via.py direct ${dir}/open`;
      const r = spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', 'unshare', '-Urm', 'sh', '-c', script], { encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(0);
      const aliased = JSON.parse(r.stdout) as Attack;
      expect(aliased.results).toEqual(['EPERM']);
      expect((await g2.decisionsOf(real.pid))[0]).toMatchObject({ ruleId: 'python', denied: false, exe: python });
      const [d] = await g2.decisionsOf(aliased.pid);
      expect(d).toMatchObject({ ruleId: null, reason: 'default', denied: true, exeUnknown: false });
      // The decision shows the path the copy appears at in the caller's
      // namespace (a path is only a name); device and inode tell the file.
      expect(d!.exe).toBe(python);
      expect(d!.exeIno).toBe(statSync(copy, { bigint: true }).ino);
    } finally {
      g2.guard.stop();
    }
  });

  it('initialNamespaces: a deny for every caller but the host\'s holds whatever path the caller shows', async () => {
    const ns = await guarded({ mode: 'enforce', rules: [{ id: 'foreign', action: 'deny', match: { not: { initialNamespaces: true } } }] });
    try {
      const host = attack('root', 'direct', `${dir}/open`);
      expect(host.results).toEqual(['ok']);
      const user = attack('user', 'direct', `${dir}/open`);
      expect(user.results).toEqual(['EPERM']);
      const root = spawnSync('unshare', ['-m', '/usr/bin/python3', `${dir}/chroot_via.py`, 'direct', `${dir}/open`], { encoding: 'utf8' });
      expect((JSON.parse(root.stdout) as Attack).results).toEqual(['EPERM']); // root, but in a mount namespace of its own
      expect((await ns.decisionsOf(host.pid))[0]).toMatchObject({ initialNamespaces: true, ruleId: null });
      expect((await ns.decisionsOf(user.pid))[0]).toMatchObject({ initialNamespaces: false, ruleId: 'foreign', denied: true });
    } finally {
      ns.guard.stop();
    }
  });
});

describe.skipIf(!LSM)(lsmTitle(`guard: a flood of allowed calls`), () => {
  it('an unprivileged flood of allowed chroots with long arguments never pushes out a deny decision, and every record not written is counted by action', async () => {
    const guard = chrootGuard(
      { mode: 'enforce', rules: [{ id: 'no-deny', action: 'deny', match: { subtree: `${dir}/deny` } }] },
      { ringBufferBytes: 16 << 10 },
    );
    const got = { allow: 0, deny: 0 };
    const deniedPids = new Set<number>();
    guard.decisions$.subscribe((d) => {
      if (d.uid === 65534 && d.action === 'allow') got.allow++;
      if (d.action === 'deny' && deniedPids.has(d.pid)) got.deny++;
    });
    await guard.ready;
    // About 4 KiB per allowed record: `open` reached through ~2,000 `./`,
    // relative to the flood's cwd (each chroot(2) leaves it in `open`). The
    // flood stops when its stdin ends.
    const long = `${'./'.repeat(2000)}.`;
    const flood = spawn(
      'setpriv',
      [
        '--reuid=65534', '--regid=65534', '--clear-groups', 'unshare', '-Urm', 'perl', '-e',
        'my $n = 0; chdir($ARGV[0]) or die "chdir: $!"; my $in = ""; vec($in, fileno(STDIN), 1) = 1; until (select(my $r = $in, undef, undef, 0)) { chroot($ARGV[1]) or die "chroot: $!"; $n++ } print "$n\n";',
        `${dir}/open`, long,
      ],
      { stdio: ['pipe', 'pipe', 'inherit'] },
    );
    let out = '';
    flood.stdout.on('data', (b: Buffer) => (out += b.toString()));
    const closed = new Promise<number | null>((r) => flood.on('close', r));
    let denials = 0;
    try {
      await sleep(500);
      // Ten denials spread over the flood (each attack is a Python start, a
      // few seconds under TCG while the flood runs).
      for (let i = 0; i < 10; i++) {
        const a = attack('root', 'direct', `${dir}/deny/inner`);
        expect(a.results).toEqual(['EPERM']);
        deniedPids.add(a.pid);
        denials++;
        await sleep(50);
      }
    } finally {
      flood.stdin.end();
    }
    expect(await closed).toBe(0);
    const calls = Number(out.trim());
    let stats = guard.stats();
    const deadline = Date.now() + 20_000;
    while ((got.deny < denials || got.allow + stats.allowLost < calls) && Date.now() < deadline) {
      await sleep(50);
      stats = guard.stats();
    }
    guard.stop();
    expect(calls).toBeGreaterThan(1000);
    expect(stats.allowLost).toBeGreaterThan(0); // the flood did fill the ring buffer
    expect(got.deny).toBe(denials); // every deny decision delivered
    expect(stats.denyLost).toBe(0);
    expect(got.allow + stats.allowLost).toBe(calls); // every allow decision delivered or counted
    expect(stats.ringBufferFull).toBe(decisionsLost(stats));
  }, 180_000);
});

describe.skipIf(!LSM)(lsmTitle(`guard: calls racing policy updates`), () => {
  it('a decision that read a policy replaced meanwhile is never taken from the torn read: failMode decides, reported as policy-torn', async () => {
    // A deep root makes each decision long (the walk and the hash pass), so
    // a tight update loop replaces the policy twice inside many of them.
    let deep = `${dir}/open/torn`;
    for (let i = 0; i < 30; i++) deep += `/${'d'.repeat(100)}`;
    mkdirSync(deep, { recursive: true, mode: 0o755 });
    const allow = (n: number): Policy => ({ mode: 'enforce', default: 'allow', failMode: 'deny', rules: [{ id: `gen-${n}`, action: 'allow', match: { subtree: `${dir}/open` } }] });
    const guard = chrootGuard(allow(0));
    const torn: ChrootDecision[] = [];
    const wrong: ChrootDecision[] = [];
    guard.decisions$.subscribe((d) => {
      if (d.uid !== 65534) return;
      if (d.reason === 'policy-torn') torn.push(d);
      else if (d.denied || d.reason !== 'rule') wrong.push(d);
    });
    await guard.ready;
    // One round: the storm against a tight update loop. A decision is torn
    // only if it outlasts a flip and the start of the next update, which
    // a fast decision does only when preempted inside the program: the storm
    // shares CPU 0 with a busy loop, and on a fully preemptible kernel (as
    // `cargo xtask test` runs this file in the VM) the tick then stops many
    // decisions midway while the updates run on the other CPU. Elsewhere it
    // is up to the host's scheduler, so rounds repeat, a bounded number of
    // times, until the race happened at least once; every round's decisions
    // are checked.
    const hog = spawn('taskset', ['-c', '0', 'perl', '-e', '1 while 1'], { stdio: 'ignore' });
    let updates = 0;
    let calls = 0;
    let denied = 0;
    const round = async () => {
      const storm = spawn(
        'taskset',
        ['-c', '0', 'setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', 'unshare', '-Urm', 'perl', '-e', 'my ($n, $d) = (0, 0); chdir($ARGV[0]) or die; my $t = time + 4; while (time < $t) { $n++; chroot(".") or $!{EPERM} && $d++ } print "$n $d\\n";', deep],
        { stdio: ['ignore', 'pipe', 'inherit'] },
      );
      let out = '';
      storm.stdout.on('data', (b: Buffer) => (out += b.toString()));
      const closed = new Promise((r) => storm.on('close', r));
      // Updates for as long as the storm runs. `update` resolves without
      // I/O, so the loop yields to the event loop now and then, for the
      // decisions and the storm's exit to be seen at all.
      const end = Date.now() + 4_500;
      while (Date.now() < end) {
        await guard.update(allow(++updates));
        if (updates % 16 === 0) await new Promise((r) => setImmediate(r));
      }
      await closed;
      const [n, d] = out.trim().split(' ').map(Number);
      calls += n!;
      denied += d!;
    };
    try {
      for (let r = 0; r < 20 && denied === 0; r++) await round();
    } finally {
      hog.kill('SIGKILL');
    }
    console.log(`update race: ${calls} calls, ${updates} updates, ${denied} decided by failMode after a torn read`);
    const deadline = Date.now() + 15_000;
    while (torn.length < denied && Date.now() < deadline) await sleep(50);
    const stats = guard.stats();
    guard.stop();
    expect(updates).toBeGreaterThan(100);
    expect(calls).toBeGreaterThan(100);
    expect(denied).toBeGreaterThan(0); // the race did happen
    expect(torn).toHaveLength(denied); // every denial was a torn read, decided by failMode
    expect(torn.every((d) => d.denied && d.action === 'deny' && d.ruleId === null)).toBe(true);
    expect(wrong).toEqual([]); // whole reads all allowed by their own generation's rule
    expect(stats.lsmErrors).toBe(denied);
  }, 300_000);
});

/** Whether `bpf_task_storage_get` only try-locks its busy mark for LSM programs: no `bpf_task_storage_get_recur` (6.2+; Debian's 6.1.192 has none). */
function storageTryLocks(): boolean {
  return !/ bpf_task_storage_get_recur$/m.test(readFileSync('/proc/kallsyms', 'utf8'));
}
