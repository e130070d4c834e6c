/**
 * The kernel program and `evaluatePolicy` decide alike: fast-check
 * generates policies and chroot calls (paths with non-ASCII and non-UTF-8
 * bytes, comm bytes, uids and gids, cgroups, namespaces, executables,
 * callers already chrooted, directories reached through a detached mount,
 * escapes through a kept directory fd, cwds in and out of the new root,
 * roots and cwds too deep for the kernel's walk to judge),
 * test/differential/caller.py makes every call for real (a policy's calls
 * at once, each in a process of its own) against
 * `lsm/path_chroot`, and each kernel decision must equal the TypeScript one
 * computed from the decision's own fields and the facts the policy was
 * compiled with. The decision's fields are checked against what the caller
 * set up, so both sides are judged on the real identity.
 *
 * Runs where the BPF LSM runs (the VM); at least 2,000 calls per run.
 */
import { spawn, type ChildProcessByStdio } from 'node:child_process';
import type { Readable, Writable } from 'node:stream';
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmdirSync, rmSync, statSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chrootGuard, evaluatePolicy, type ChrootDecision, type ChrootEvent, type ChrootGuard, type GuardInfo, type Policy, type PolicyConditions, type PolicyRule } from '../ts/index.js';
import { sleep } from './helpers.js';
import { LSM, lsmTitle } from './lsm.js';

/** Policies per run, and calls per policy: 200 × 10 = 2,000 kernel decisions compared. */
const RUNS = Number(process.env.CG_DIFFERENTIAL_RUNS ?? 200);
const CALLS = 10;

/** Directory names: ASCII, UTF-8 (é), a byte that is not UTF-8 (0xe9), a space, a backslash. */
const NAMES: readonly Buffer[] = [Buffer.from('a'), Buffer.from('é'), Buffer.from([0xe9]), Buffer.from('x y'), Buffer.from('b\\c')];
const IDS = [0, 1000, 1001] as const;
/** Comms the calls set (bytes), of which the policies may name the UTF-8 ones. */
const COMMS: readonly Buffer[] = [Buffer.from('python3'), Buffer.from('alpha'), Buffer.from('bêta'), Buffer.from([0x78, 0x80]), Buffer.from('\\x80')];

/** Policy comms: the UTF-8 ones of {@link COMMS}, and one that names the bytes `\x80` literally. */
const POLICY_COMMS = ['python3', 'alpha', 'bêta', '\\x80'] as const;

const strict = new TextDecoder('utf-8', { fatal: true });

/** A path as a policy writes it: bytes that are not UTF-8 as `\xHH`, a backslash as `\\`. */
function policyPath(bytes: Buffer): string {
  let out = '';
  for (let i = 0; i < bytes.length; ) {
    const b = bytes[i]!;
    const len = b < 0x80 ? 1 : b >= 0xc2 && b < 0xe0 ? 2 : b >= 0xe0 && b < 0xf0 ? 3 : b >= 0xf0 && b < 0xf5 ? 4 : 0;
    let text: string | undefined;
    if (len > 0 && i + len <= bytes.length) {
      try {
        text = strict.decode(bytes.subarray(i, i + len));
      } catch {
        text = undefined;
      }
    }
    if (text === undefined) {
      out += `\\x${b.toString(16).padStart(2, '0')}`;
      i++;
    } else {
      out += text === '\\' ? '\\\\' : text;
      i += len;
    }
  }
  return out;
}

/** Levels of `deep` below the root: more than the kernel's 64-step walk, so facts about it are unknown. */
const DEEP_LEVELS = 70;

interface World {
  root: Buffer;
  dirs: Buffer[];
  /** A directory {@link DEEP_LEVELS} levels below `root`. */
  deep: Buffer;
  /** The root's parent: outside a chrooted caller's root. */
  outside: Buffer;
  exes: { real: string; copy: string };
  cgroups: string[];
  /** The test's own cgroup (where an unmoved caller stays), then each of `cgroups`. */
  cgroupIds: number[];
  initialMntNs: number;
}

interface Call {
  id: number;
  server: 'real' | 'copy';
  uid: number;
  euid: number;
  gid: number;
  egid: number;
  comm: Buffer;
  cgroup: number | null;
  ns: 'initial' | 'mnt' | 'user';
  detached: boolean;
  chrooted: boolean;
  cwd: 'slash' | 'target' | 'deep';
  target: Buffer;
}

/**
 * The escape facts the kernel must report for call `c` (see
 * test/differential/caller.py for what each set-up does): null where its
 * walk must give up (more than 64 steps), which the deep directory forces.
 */
function expectedFacts(c: Call, w: World): { escapesRoot: boolean | null; cwdOutsideRoot: boolean | null } {
  const deep = c.target.equals(w.deep);
  const kept = c.chrooted && c.target.equals(w.outside);
  // A detached mount is reachable from no root; the caller stands in it.
  if (c.detached) return { escapesRoot: true, cwdOutsideRoot: false };
  const escapesRoot = kept ? true : deep ? null : false;
  if (kept || c.cwd === 'target') return { escapesRoot, cwdOutsideRoot: false };
  // From deep, the walk up meets the target at once or gives up.
  if (c.cwd === 'deep') return { escapesRoot, cwdOutsideRoot: deep ? false : null };
  // At its root: outside any new root but that root itself.
  return { escapesRoot, cwdOutsideRoot: !(c.chrooted && c.target.equals(w.root)) };
}

/** How long a call's decisions may take to arrive. */
const DECISION_TIMEOUT = 20_000;

/** The cgroup v2 id of this process's cgroup: its directory's inode number. */
function ownCgroup(): number {
  const path = readFileSync('/proc/self/cgroup', 'utf8').match(/^0::(.*)$/m)?.[1] ?? '/';
  return statSync(`/sys/fs/cgroup${path}`).ino;
}

describe.skipIf(!LSM)(lsmTitle(`kernel and evaluatePolicy decide alike`), () => {
  let world: World;
  let base: string;
  let guard: ChrootGuard;
  const decisions = new Map<number, ChrootDecision[]>();
  const servers = new Map<string, { proc: ChildProcessByStdio<Writable, Readable, null>; replies: Map<number, (r: { pid: number; result: string }) => void> }>();

  beforeAll(async () => {
    base = mkdtempSync('/tmp/cg-diff-');
    chmodSync(base, 0o755);
    const root = Buffer.from(realpathSync(base));
    const dirs: Buffer[] = [root];
    for (const a of NAMES) {
      const da = Buffer.concat([root, Buffer.from('/'), a]);
      dirs.push(da);
      for (const b of NAMES) dirs.push(Buffer.concat([da, Buffer.from('/'), b]));
    }
    const deep = Buffer.from(`${root.toString()}/deep${'/d'.repeat(DEEP_LEVELS - 1)}`);
    for (const d of [...dirs, deep]) mkdirSync(d, { recursive: true, mode: 0o755 });
    const real = realpathSync('/usr/bin/python3');
    const copy = `${base}/python-copy`;
    copyFileSync(real, copy);
    chmodSync(copy, 0o755);
    const cgroups = [0, 1].map((i) => `/sys/fs/cgroup/cg-diff-${process.pid}-${i}`);
    for (const c of cgroups) mkdirSync(c, { recursive: true });
    world = {
      root,
      dirs,
      deep,
      outside: Buffer.from(realpathSync(`${base}/..`)),
      exes: { real, copy },
      cgroups,
      cgroupIds: [ownCgroup(), ...cgroups.map((c) => statSync(c).ino)],
      initialMntNs: statSync('/proc/1/ns/mnt').ino,
    };
    const script = fileURLToPath(new URL('./differential/caller.py', import.meta.url));
    for (const [name, exe] of Object.entries(world.exes)) {
      const proc = spawn(exe, [script], { stdio: ['pipe', 'pipe', 'inherit'] });
      const replies = new Map<number, (r: { pid: number; result: string }) => void>();
      createInterface({ input: proc.stdout }).on('line', (line) => {
        const r = JSON.parse(line) as { id: number; pid: number; result: string };
        replies.get(r.id)?.(r);
        replies.delete(r.id);
      });
      servers.set(name, { proc, replies });
    }
    guard = chrootGuard({ mode: 'audit', rules: [] });
    guard.decisions$.subscribe((d) => {
      const list = decisions.get(d.pid) ?? [];
      list.push(d);
      decisions.set(d.pid, list);
    });
    await guard.ready;
  });

  afterAll(() => {
    guard?.stop();
    for (const s of servers.values()) s.proc.stdin.end();
    for (const c of world?.cgroups ?? []) {
      try {
        rmdirSync(c);
      } catch {
        // still holds an exiting child; the VM is thrown away
      }
    }
    rmSync(base, { recursive: true, force: true });
  });

  /** Runs one call through its server. */
  function run(c: Call): Promise<{ pid: number; result: string }> {
    const s = servers.get(c.server)!;
    return new Promise((resolve) => {
      s.replies.set(c.id, resolve);
      s.proc.stdin.write(
        JSON.stringify({
          id: c.id,
          uid: c.uid,
          euid: c.euid,
          gid: c.gid,
          egid: c.egid,
          comm: c.comm.toString('hex'),
          cgroup: c.cgroup === null ? null : world.cgroups[c.cgroup],
          ns: c.ns,
          detached: c.detached,
          chrooted: c.chrooted,
          cwd: c.cwd,
          root: world.root.toString('hex'),
          target: c.target.toString('hex'),
          deep: world.deep.toString('hex'),
        }) + '\n',
      );
    });
  }

  it(`${RUNS} policies × ${CALLS} calls: every kernel decision equals evaluatePolicy's`, async () => {
    const id = () => fc.constantFrom(...IDS);
    const paths = () => fc.constantFrom(...world.dirs.map(policyPath), '/', `${world.root.toString()}/missing`);
    const listOf = <T>(arb: fc.Arbitrary<T>) => fc.oneof(arb, fc.uniqueArray(arb, { minLength: 1, maxLength: 3 }));
    const single: { [K in keyof PolicyConditions]-?: fc.Arbitrary<PolicyConditions[K]> } = {
      path: listOf(paths()),
      subtree: listOf(paths()),
      uid: listOf(id()),
      euid: id(),
      gid: id(),
      egid: id(),
      comm: fc.constantFrom(...POLICY_COMMS),
      exe: listOf(fc.constantFrom(world.exes.real, world.exes.copy, '/bin/sh')),
      cgroupId: fc.constantFrom(...world.cgroupIds),
      alreadyChrooted: fc.boolean(),
      mntNs: fc.constantFrom(world.initialMntNs, 4026539999),
      initialNamespaces: fc.boolean(),
      escapesRoot: fc.boolean(),
      cwdOutsideRoot: fc.boolean(),
    };
    // Up to three conditions a block: with more, rules would almost never
    // match and the default would decide nearly every call.
    const conditions = (): fc.Arbitrary<PolicyConditions> =>
      fc
        .shuffledSubarray(Object.keys(single) as Array<keyof PolicyConditions>, { minLength: 0, maxLength: 3 })
        .chain((keys) => fc.record(Object.fromEntries(keys.map((k) => [k, single[k]])) as { [K in keyof PolicyConditions]: fc.Arbitrary<PolicyConditions[K]> }));
    const rule = (i: number): fc.Arbitrary<PolicyRule> =>
      fc.record({
        id: fc.constant(`r${i}`),
        action: fc.constantFrom('allow' as const, 'deny' as const, 'audit' as const),
        match: fc.oneof(
          { weight: 3, arbitrary: conditions() },
          { weight: 1, arbitrary: fc.tuple(conditions(), conditions().filter((c) => Object.keys(c).length > 0)).map(([m, not]) => ({ ...m, not })) },
        ),
      });
    const policy: fc.Arbitrary<Policy> = fc
      .record({
        mode: fc.constantFrom('enforce' as const, 'audit' as const),
        default: fc.constantFrom('allow' as const, 'deny' as const, 'audit' as const),
        n: fc.integer({ min: 0, max: 6 }),
      })
      .chain(({ mode, default: d, n }) => fc.tuple(...Array.from({ length: n }, (_, i) => rule(i))).map((rules) => ({ mode, default: d, rules })));
    let nextId = 0;
    const call: fc.Arbitrary<Call> = fc
      .record({
        server: fc.constantFrom('real' as const, 'copy' as const),
        uid: id(),
        euid: id(),
        gid: id(),
        egid: id(),
        comm: fc.constantFrom(...COMMS),
        cgroup: fc.constantFrom(null, 0, 1),
        ns: fc.constantFrom('initial' as const, 'mnt' as const, 'user' as const),
        detached: fc.boolean(),
        chrooted: fc.boolean(),
        cwd: fc.constantFrom('slash' as const, 'target' as const, 'deep' as const),
        // Mostly the tree's directories (which path rules name); the deep
        // one and the root's parent (an escape for a chrooted caller) too.
        target: fc.oneof({ weight: 4, arbitrary: fc.constantFrom(...world.dirs) }, { weight: 1, arbitrary: fc.constantFrom(world.deep, world.outside) }),
      })
      .map((c) => ({ ...c, id: nextId++, detached: c.detached && c.ns !== 'initial' && !c.chrooted }));

    let compared = 0;
    let byRule = 0;
    let withUnknowns = 0;
    /** How often each escape fact came out true, false and null in the calls' decisions. */
    const facts = { escapesRoot: new Map<boolean | null, number>(), cwdOutsideRoot: new Map<boolean | null, number>() };
    await fc.assert(
      fc.asyncProperty(policy, fc.array(call, { minLength: CALLS, maxLength: CALLS }), async (p, calls) => {
        let info: GuardInfo;
        try {
          info = await guard.update(p);
        } catch (err) {
          // A generated policy the compiler refuses (too many rules after
          // expansion) is not a decision to compare.
          if ((err as { code?: string }).code === 'INVALID_POLICY') return;
          throw err;
        }
        // All at once: each call is a process of its own, decided on its own pid.
        const done = await Promise.all(calls.map(async (c) => ({ c, ...(await run(c)) })));
        for (const { c, pid, result } of done) {
          expect(result, JSON.stringify(c)).not.toMatch(/^setup: (?!chrooted: EPERM)/);
          const expected = result.startsWith('setup') ? 1 : c.chrooted ? 2 : 1;
          const deadline = Date.now() + DECISION_TIMEOUT;
          while ((decisions.get(pid)?.length ?? 0) < expected && Date.now() < deadline) await sleep(5);
          const got = (decisions.get(pid) ?? []).sort((a, b) => (a.ts < b.ts ? -1 : 1));
          decisions.delete(pid);
          expect(got, `decisions of ${JSON.stringify(c)}`).toHaveLength(expected);
          for (const d of got) {
            expect(d.generation).toBe(info.generation);
            const want = evaluatePolicy(p, d as unknown as ChrootEvent, info.context);
            const label = `policy ${JSON.stringify(p)}\ncall ${JSON.stringify({ ...c, comm: c.comm.toString('hex'), target: c.target.toString('hex') })}\ndecision ${JSON.stringify({ ...d, pathBytes: undefined, resolvedPathBytes: d.resolvedPathBytes?.toString('hex'), commBytes: d.commBytes.toString('hex'), exeIno: String(d.exeIno), cgroupId: String(d.cgroupId), ts: undefined })}`;
            expect({ action: d.action, ruleId: d.ruleId, reason: d.reason }, label).toEqual({ action: want.action, ruleId: want.ruleId, reason: want.ruleId === null ? 'default' : 'rule' });
            expect(d.denied, label).toBe(want.action === 'deny' && p.mode === 'enforce');
            compared++;
            if (want.ruleId !== null) byRule++;
            if (want.unknown.length) withUnknowns++;
          }
          // The decision of the call itself saw the identity the caller set up.
          const d = got[got.length - 1]!;
          if (result.startsWith('setup')) continue;
          expect(result).toBe(d.denied ? 'EPERM' : 'ok');
          expect(d).toMatchObject({ uid: c.uid, euid: c.euid, gid: c.gid, egid: c.egid, callerChrooted: c.chrooted, initialNamespaces: c.ns === 'initial', resolvedPathUnreachable: c.detached });
          expect(d.commBytes.equals(c.comm)).toBe(true);
          if (!c.detached && !c.target.equals(world.deep)) expect(d.resolvedPathBytes?.equals(c.target)).toBe(true);
          expect({ escapesRoot: d.escapesRoot, cwdOutsideRoot: d.cwdOutsideRoot }, JSON.stringify(c)).toEqual(expectedFacts(c, world));
          for (const k of ['escapesRoot', 'cwdOutsideRoot'] as const) facts[k].set(d[k], (facts[k].get(d[k]) ?? 0) + 1);
          expect(Number(d.cgroupId)).toBe(world.cgroupIds[c.cgroup === null ? 0 : c.cgroup + 1]);
          const exe = statSync(world.exes[c.server], { bigint: true });
          expect(d.exeIno).toBe(exe.ino);
        }
      }),
      { numRuns: RUNS, endOnFailure: true },
    );
    expect(compared).toBeGreaterThanOrEqual(RUNS * CALLS);
    // The generated cases reach what matters: rules that decide, and
    // conditions that cannot be judged (detached paths).
    expect(byRule / compared).toBeGreaterThan(0.2);
    expect(withUnknowns).toBeGreaterThan(RUNS / 10);
    // Each escape fact came out true, false and unknown, many times.
    console.log(`escape facts over the calls: ${JSON.stringify(Object.fromEntries(Object.entries(facts).map(([k, m]) => [k, Object.fromEntries(m)])))}`);
    for (const m of Object.values(facts)) for (const v of [true, false, null]) expect(m.get(v) ?? 0).toBeGreaterThan(RUNS / 20);
  }, 1_800_000);
});
