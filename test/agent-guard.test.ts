/**
 * `chroot-guard agent` with a `guard:` section: the built CLI as a host
 * runs it, its pinned guard deciding real chroot(2) calls. A loop of denied
 * calls runs while the agent is killed (SIGKILL) and started again: no call
 * may succeed, and one guard stays. SIGHUP with a broken policy keeps the
 * old one (a guard record, a metric); with a good one the new policy and
 * the next generation take effect. A guard pinned by `enforce --pin` is
 * adopted, never doubled, and config errors leave it as it was.
 *
 * The BPF LSM runs in the VM only (test/lsm.ts); where it does not, the
 * agent's refusal to start a guard (exit 3) is tested instead. The tests
 * share one guard in one pin directory: each load verifies the LSM program,
 * 20–30 s under the VM's TCG. The first test pins it, the later ones adopt
 * it (or replace its policy with `enforce --pin`), and it is unloaded after
 * the last one.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { pinnedGuard, unloadPinnedGuard, type Policy } from '../ts/index.js';
import { bpftoolShow, CLI, cli, ndjson, sleep, tryChroot, type StreamRecord } from './helpers.js';
import { answer, freePort, samples } from './http.js';
import { LSM, lsmTitle } from './lsm.js';

const PIN_DIR = '/sys/fs/bpf/chroot-guard-agent-test';

let dir: string;
let jail: string;
let other: string;
beforeAll(() => {
  dir = realpathSync(mkdtempSync('/tmp/cg-agent-guard-'));
  chmodSync(dir, 0o755);
  jail = join(dir, 'jail');
  other = join(dir, 'other');
  for (const d of [jail, other]) mkdirSync(d);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const denying = (id: string, subtree: string): Policy => ({ mode: 'enforce', rules: [{ id, action: 'deny', match: { subtree } }] });

/** Waits until `pred` holds (after `step`, when given, each time), or throws after `ms` with `why()`. */
async function until(pred: () => boolean, why: () => string, ms = 60_000, step?: () => Promise<unknown>): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    await step?.();
    if (pred()) return;
    if (Date.now() > deadline) throw new Error(`timed out: ${why()}`);
    await sleep(200);
  }
}

/**
 * Agents started and not yet exited. A test that fails leaves none behind:
 * the next one would find the shared guard's decision reader taken.
 */
const running = new Set<ChildProcess>();
afterEach(async () => {
  await Promise.all([...running].map((c) => new Promise((resolve) => (c.once('exit', resolve), c.kill('SIGKILL')))));
});

/** A running agent. */
interface Agent {
  readonly child: ChildProcess;
  readonly port: number;
  readonly out: string;
  stderr(): string;
  /** The records of its output file so far (each checked against events.schema.json). */
  records(): StreamRecord[];
  /** How many decision records of `pid` its output file holds so far (a text count: cheap enough to poll). */
  decisionsOf(pid: number): number;
  signal(signal: NodeJS.Signals): void;
  readonly exited: Promise<number | null>;
}

/**
 * The agent config: a guard with the policy file `policy`, output to `out`,
 * metrics on `port`. The watch sees only a comm nobody uses, in tracepoint
 * mode: its side is other files' subject, and its fentry programs take
 * the longest to load under the VM's TCG.
 */
function config(name: string, policy: string, out: string, port: number): string {
  const file = join(dir, `${name}.agent.yaml`);
  writeFileSync(file, `watch: { mode: tracepoint, filters: { comm: cg-nobody-uses } }\noutput: { path: ${out} }\nmetrics: { listen: "127.0.0.1:${port}" }\nguard:\n  policy: ${policy}\n  pinDir: ${PIN_DIR}\n`);
  return file;
}

/** Starts the agent on the config `name` (written with {@link config}); resolves once it runs. */
async function startAgent(name: string, policy: string): Promise<Agent> {
  const port = await freePort();
  const out = join(dir, `${name}.ndjson`);
  const child = spawn(process.execPath, [CLI, 'agent', '--config', config(name, policy, out, port)], { stdio: ['ignore', 'ignore', 'pipe'] });
  running.add(child);
  child.on('exit', () => running.delete(child));
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  // Loading and verifying the guard takes a while under TCG.
  const t0 = Date.now();
  await until(
    () => stderr.includes('agent running') || child.exitCode !== null,
    () => `the agent did not start:\n${stderr}`,
    180_000,
  );
  console.log(`agent ${name}: started in ${Date.now() - t0} ms`);
  if (child.exitCode !== null) throw new Error(`the agent exited with ${child.exitCode}:\n${stderr}`);
  return {
    child,
    port,
    out,
    stderr: () => stderr,
    records: () => {
      let text = readFileSync(out, 'utf8');
      // A record being written may be cut short: only whole lines.
      text = text.slice(0, text.lastIndexOf('\n') + 1);
      return ndjson(text);
    },
    decisionsOf: (pid) => readFileSync(out, 'utf8').split('\n').filter((l) => l.startsWith('{"type":"decision"') && l.includes(`,"pid":${pid},`)).length,
    signal: (s) => child.kill(s),
    exited,
  };
}

/** The `cg_lsm_chroot` programs loaded on the host now, and the BPF links that hold each. */
function lsmPrograms(): Array<{ id: number; links: number }> {
  const progs = bpftoolShow('prog');
  const links = bpftoolShow('link');
  return progs.filter((p) => p.name === 'cg_lsm_chroot').map((p) => ({ id: p.id, links: links.filter((l) => l.prog_id === p.id).length }));
}

/** The guard records of an agent's output. */
const guardRecords = (a: Agent) => a.records().filter((r) => (r.type as string) === 'guard');

/**
 * A loop of chroot(2) calls into `target` as root, through a directory fd
 * (fchdir, then chroot(".")), so that a call that succeeds changes nothing
 * the next one names; one call every `pauseMs`. Prints
 * "calls eperm ok other" after every 20 calls and once more when SIGTERM
 * stops it.
 */
function chrootLoop(target: string, pauseMs: number) {
  const script = `
import errno, os, signal, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
n = {'calls': 0, 'eperm': 0, 'ok': 0, 'other': 0}
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
def say():
    sys.stdout.write('%d %d %d %d\\n' % (n['calls'], n['eperm'], n['ok'], n['other'])); sys.stdout.flush()
while not stop:
    os.fchdir(fd)
    try:
        os.chroot('.'); n['ok'] += 1
    except OSError as e:
        n['eperm' if e.errno == errno.EPERM else 'other'] += 1
    n['calls'] += 1
    if n['calls'] % 20 == 0: say()
    time.sleep(${pauseMs / 1000})
say()`;
  const child = spawn('python3', ['-c', script, target], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  const last = () => {
    const lines = out.trim().split('\n').filter(Boolean);
    const [calls, eperm, ok, other] = (lines.pop() ?? '0 0 0 0').split(' ').map(Number) as [number, number, number, number];
    return { calls, eperm, ok, other };
  };
  return {
    pid: child.pid!,
    last,
    stop: async () => {
      child.kill('SIGTERM');
      await exited;
      return last();
    },
  };
}

// Agents start slowly under the VM's TCG (several seconds each).
describe.skipIf(!LSM)(lsmTitle('agent guard: pinned, adopted, reloaded'), { timeout: 600_000 }, () => {
  // A guard an earlier run left behind would be adopted instead of pinned.
  beforeAll(() => void unloadPinnedGuard({ dir: PIN_DIR }));
  afterAll(() => void unloadPinnedGuard({ dir: PIN_DIR }));

  it('restart without a gap: a loop of denied calls runs while the agent is SIGKILLed and started again; no call succeeds, one guard stays', async () => {
    const policy = join(dir, 'restart.json');
    writeFileSync(policy, JSON.stringify(denying('no-jail', jail)));
    const before = lsmPrograms().length;
    const a = await startAgent('restart-a', policy);
    const pinned = pinnedGuard({ dir: PIN_DIR })!;
    expect(pinned).toMatchObject({ generation: 1, ruleIds: ['no-jail'], mode: 'enforce' });
    expect(a.stderr()).toContain(`guard pinned at ${PIN_DIR}: enforcing ${policy} (generation 1)`);
    expect((await answer(a.port, '/healthz')).status).toBe(200);

    const loop = chrootLoop(jail, 5);
    let b: Agent | undefined;
    try {
      await until(() => loop.last().calls >= 40, () => `the loop made ${loop.last().calls} calls`);
      a.signal('SIGKILL');
      expect(await a.exited).toBeNull();
      // Calls while no agent runs: the pinned guard alone decides them.
      const atKill = loop.last().calls;
      await until(() => loop.last().calls >= atKill + 100, () => `the loop made ${loop.last().calls} calls`);
      expect(pinnedGuard({ dir: PIN_DIR })).toMatchObject({ generation: 1, programId: pinned.programId });
      b = await startAgent('restart-b', policy);
      const atStart = loop.last().calls;
      await until(() => loop.last().calls >= atStart + 40, () => `the loop made ${loop.last().calls} calls`);
    } finally {
      const end = await loop.stop();
      console.log(`restart: ${end.calls} chroot calls: ${end.eperm} EPERM, ${end.ok} ok, ${end.other} other`);
      expect(end.ok).toBe(0);
      expect(end.other).toBe(0);
      expect(end.eperm).toBe(end.calls);
    }
    // Adopted: the same program, one link, no second guard.
    expect(b.stderr()).toContain(`adopted the guard pinned at ${PIN_DIR}: now enforcing ${policy} (generation 2)`);
    expect(pinnedGuard({ dir: PIN_DIR })).toMatchObject({ generation: 2, programId: pinned.programId, linkId: pinned.linkId });
    const progs = lsmPrograms();
    expect(progs).toHaveLength(before + 1);
    expect(progs.filter((p) => p.id === pinned.programId)).toEqual([{ id: pinned.programId, links: 1 }]);
    // The decisions made while no agent ran are in the second agent's stream, read from the pinned ring buffer.
    // Every decision read is in the file and counted in the metrics (the
    // file is written a little later), the last ones of generation 2.
    let counted = 0;
    await until(
      () => counted > 0 && b!.decisionsOf(loop.pid) === counted,
      () => `the metrics count ${counted} decisions, the file has ${b!.decisionsOf(loop.pid)}`,
      60_000,
      async () => (counted = samples((await answer(b!.port, '/metrics')).body, 'chroot_guard_decisions_total').get('{rule="no-jail",action="deny"}') ?? -1),
    );
    const records = b.records();
    expect(records[0]).toMatchObject({ type: 'attach', mode: 'lsm', generation: 2, policyMode: 'enforce' });
    expect(guardRecords(b)).toEqual([expect.objectContaining({ event: 'adopted', policy, pinDir: PIN_DIR, generation: 2, policyMode: 'enforce', code: null, problems: [] })]);
    const attachTs = BigInt(records[0]!.ts as number);
    const decided = records.filter((r) => r.type === 'decision' && r.pid === loop.pid);
    const backlog = decided.filter((r) => BigInt(r.ts as number) < attachTs);
    expect(backlog.length, 'decisions made before the second agent started').toBeGreaterThan(0);
    for (const d of decided) expect(d).toMatchObject({ ruleId: 'no-jail', action: 'deny', denied: true, source: 'lsm' });
    expect(decided.at(-1)!.generation).toBe(2);
    const lost = records.filter((r) => r.type === 'lost');
    for (const l of lost) expect(['watch', 'guard']).toContain(l.source);
    const denyLost = lost.filter((l) => l.source === 'guard').reduce((n, l) => n + (l.denyLost as number), 0);
    console.log(`restart: the second agent wrote ${decided.length} decisions of the loop (${backlog.length} made before it started), ${denyLost} deny decisions lost (ring buffer full)`);
    const metrics = (await answer(b.port, '/metrics')).body;
    expect(samples(metrics, 'chroot_guard_decisions_total').get('{rule="no-jail",action="deny"}')).toBe(decided.length);
    expect(samples(metrics, 'chroot_guard_decisions_lost_total').get('{action="deny"}')).toBe(denyLost);
    expect(samples(metrics, 'chroot_guard_guard_generation').get('')).toBe(2);

    // SIGTERM: exit 0, the guard stays pinned and deciding.
    b.signal('SIGTERM');
    expect(await b.exited).toBe(0);
    expect(b.stderr()).toContain(`the guard stays pinned at ${PIN_DIR} and keeps deciding`);
    expect(tryChroot(join(jail)).out).toBe('EPERM outside');
    expect(pinnedGuard({ dir: PIN_DIR })).toMatchObject({ generation: 2, programId: pinned.programId });
  });

  it('SIGHUP with a broken policy, or a file any user may write: the old one keeps enforcing; a guard record and a metric say so. With a good one: it takes effect, generation + 1', async () => {
    const policy = join(dir, 'hup.yaml');
    writeFileSync(policy, `mode: enforce\nrules:\n  - id: no-jail\n    action: deny\n    match: { subtree: ${jail} }\n`);
    const g = pinnedGuard({ dir: PIN_DIR })!.generation + 1; // adopted: the next generation
    const a = await startAgent('hup', policy);
    try {
      const scrape = async () => (await answer(a.port, '/metrics')).body;
      expect(samples(await scrape(), 'chroot_guard_policy_load_failures_total').get('')).toBe(0);

      writeFileSync(policy, `mode: enforce\nrules:\n  - id: no-other\n    action: deny\n    match: { subtree: relative/path }\n`);
      a.signal('SIGHUP');
      await until(() => guardRecords(a).some((r) => r.event === 'rejected'), () => `no rejected record; stderr:\n${a.stderr()}`);
      const rejected = guardRecords(a).find((r) => r.event === 'rejected')!;
      expect(rejected).toMatchObject({ policy, pinDir: PIN_DIR, generation: g, policyMode: 'enforce', code: 'INVALID_POLICY' });
      expect(rejected.problems).toEqual([expect.stringMatching(new RegExp(`^${policy.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:5:\\d+: "subtree" must be an absolute path`))]);
      expect(a.stderr()).toContain(`SIGHUP: ${policy} refused (INVALID_POLICY); the policy in force stays (generation ${g})`);
      expect(tryChroot(jail).out).toBe('EPERM outside');
      expect(tryChroot(other).out).toBe('ok inside');
      expect(pinnedGuard({ dir: PIN_DIR })).toMatchObject({ generation: g, ruleIds: ['no-jail'] });
      let text = await scrape();
      expect(samples(text, 'chroot_guard_policy_load_failures_total').get('')).toBe(1);
      expect(samples(text, 'chroot_guard_guard_generation').get('')).toBe(g);
      expect((await answer(a.port, '/healthz')).status).toBe(200);

      // A valid policy in a file any user may write: refused for the file, before the kernel.
      writeFileSync(policy, `mode: enforce\nrules:\n  - id: no-other\n    action: deny\n    match: { subtree: ${other} }\n`);
      chmodSync(policy, 0o666);
      a.signal('SIGHUP');
      await until(() => guardRecords(a).filter((r) => r.event === 'rejected').length === 2, () => `no second rejected record; stderr:\n${a.stderr()}`);
      const unsafe = guardRecords(a).filter((r) => r.event === 'rejected')[1]!;
      expect(unsafe).toMatchObject({ policy, pinDir: PIN_DIR, generation: g, policyMode: 'enforce', code: 'UNSAFE_POLICY_FILE' });
      expect(unsafe.problems).toEqual([`${policy}: ${policy} (a file, owner uid 0, gid 0, mode 0666) is writable by its group and others: chmod go-w ${policy}`]);
      expect(a.stderr()).toContain(`SIGHUP: ${policy} refused (UNSAFE_POLICY_FILE); the policy in force stays (generation ${g})`);
      expect(pinnedGuard({ dir: PIN_DIR })).toMatchObject({ generation: g, ruleIds: ['no-jail'] });
      chmodSync(policy, 0o644);

      a.signal('SIGHUP');
      await until(() => guardRecords(a).some((r) => r.event === 'reloaded'), () => `no reloaded record; stderr:\n${a.stderr()}`);
      expect(guardRecords(a).map((r) => [r.event, r.generation])).toEqual([
        ['adopted', g],
        ['rejected', g],
        ['rejected', g],
        ['reloaded', g + 1],
      ]);
      const denied = tryChroot(other);
      expect(denied.out).toBe('EPERM outside');
      expect(tryChroot(jail).out).toBe('ok inside');
      expect(pinnedGuard({ dir: PIN_DIR })).toMatchObject({ generation: g + 1, ruleIds: ['no-other'] });
      await until(() => a.decisionsOf(denied.pid) > 0, () => 'no decision for the denied call');
      expect(a.records().find((r) => r.type === 'decision' && r.pid === denied.pid)).toMatchObject({ ruleId: 'no-other', denied: true, generation: g + 1 });
      text = await scrape();
      expect(samples(text, 'chroot_guard_guard_generation').get('')).toBe(g + 1);
      expect(samples(text, 'chroot_guard_policy_load_failures_total').get('')).toBe(2);
      expect(samples(text, 'chroot_guard_decisions_total').get('{rule="no-other",action="deny"}')).toBe(1);
      // The earlier policy's rule stays a label, counting each decision of it
      // in this agent's stream: its call above, and any the guard made while
      // no agent read (the previous test's last call), read from the ring buffer.
      const noJail = () => a.records().filter((r) => r.type === 'decision' && r.ruleId === 'no-jail').length;
      await until(
        () => samples(text, 'chroot_guard_decisions_total').get('{rule="no-jail",action="deny"}') === noJail(),
        () => `no-jail: the metrics count ${samples(text, 'chroot_guard_decisions_total').get('{rule="no-jail",action="deny"}')}, the file has ${noJail()}`,
        60_000,
        async () => (text = await scrape()),
      );
      expect(noJail()).toBeGreaterThanOrEqual(1);
      console.log(`SIGHUP: ${text.split('\n').filter((l) => /^chroot_guard_(policy_load_failures_total|guard_generation|decisions_total)/.test(l)).join('; ')}`);
    } finally {
      a.signal('SIGTERM');
      expect(await a.exited).toBe(0);
    }
  });

  it('config errors in the guard section exit 2 with file:line messages and leave the pinned guard as it was', () => {
    const good = join(dir, 'errors-good.json');
    writeFileSync(good, JSON.stringify(denying('no-jail', jail)));
    expect(cli('enforce', '--policy', good, '--pin', '--pin-dir', PIN_DIR).status).toBe(0);
    const pinned = pinnedGuard({ dir: PIN_DIR })!;
    const port = 1;

    const missing = config('errors-missing', join(dir, 'no-such-policy.yaml'), join(dir, 'errors.ndjson'), port);
    const m = cli('agent', '--config', missing);
    expect(m.status).toBe(2);
    expect(m.stderr).toContain(`${missing}:5:11: cannot read the policy file: ENOENT`);

    const bad = join(dir, 'errors-bad.yaml');
    writeFileSync(bad, `mode: enforce\nrules:\n  - id: x\n    action: nope\n    match: { subtree: ${jail} }\n`);
    const file = config('errors-bad', bad, join(dir, 'errors.ndjson'), port);
    const b = cli('agent', '--config', file);
    expect(b.status).toBe(2);
    expect(b.stderr).toContain(`${file}:5:11: the policy file ${bad} is not a valid policy (INVALID_POLICY): 1 problem, below`);
    expect(b.stderr).toContain(`${bad}:4:13: "action" must be one of allow, deny, audit; got "nope"`);
    expect(b.stderr).toContain('INVALID_CONFIG');

    expect(pinnedGuard({ dir: PIN_DIR })).toEqual(pinned);
    expect(tryChroot(jail).out).toBe('EPERM outside');
  });

  // Last: it unloads the guard the tests share.
  it('a guard pinned by enforce --pin is adopted, not doubled; /healthz fails once it is unloaded', async () => {
    const first = join(dir, 'pinned-first.json');
    writeFileSync(first, JSON.stringify(denying('no-other', other)));
    const p = cli('enforce', '--policy', first, '--pin', '--pin-dir', PIN_DIR);
    expect(p.status, p.stderr).toBe(0);
    const pinned = pinnedGuard({ dir: PIN_DIR })!;
    expect(pinned.ruleIds).toEqual(['no-other']);
    const before = lsmPrograms().length;
    const g = pinned.generation + 1;
    const policy = join(dir, 'pinned-agent.json');
    writeFileSync(policy, JSON.stringify(denying('no-jail', jail)));
    const a = await startAgent('adopt', policy);
    try {
      expect(a.stderr()).toContain(`adopted the guard pinned at ${PIN_DIR}: now enforcing ${policy} (generation ${g})`);
      expect(pinnedGuard({ dir: PIN_DIR })).toMatchObject({ generation: g, programId: pinned.programId, linkId: pinned.linkId, ruleIds: ['no-jail'] });
      expect(lsmPrograms()).toHaveLength(before);
      expect(lsmPrograms().filter((x) => x.id === pinned.programId)).toEqual([{ id: pinned.programId, links: 1 }]);
      expect(tryChroot(jail).out).toBe('EPERM outside');
      expect(tryChroot(other).out).toBe('ok inside');
      expect(guardRecords(a)).toEqual([expect.objectContaining({ event: 'adopted', generation: g })]);
      expect((await answer(a.port, '/healthz')).status).toBe(200);
      // Unloaded under it: the agent runs on, but is no longer healthy.
      expect(cli('unload', '--pin-dir', PIN_DIR).status).toBe(0);
      expect(await answer(a.port, '/healthz')).toEqual({ status: 503, body: 'not attached\n' });
      expect(samples((await answer(a.port, '/metrics')).body, 'chroot_guard_guard_generation').get('')).toBe(0);
    } finally {
      a.signal('SIGTERM');
      expect(await a.exited).toBe(0);
    }
  });

});

describe.skipIf(LSM)('agent guard where the BPF LSM cannot run', () => {
  it('exits 3 with LSM_UNAVAILABLE; nothing is pinned', async () => {
    const policy = join(dir, 'nolsm.json');
    writeFileSync(policy, JSON.stringify(denying('no-jail', jail)));
    const port = await freePort();
    const r = cli('agent', '--config', config('nolsm', policy, join(dir, 'nolsm.ndjson'), port));
    expect(r.status).toBe(3);
    expect(r.stderr).toContain('LSM_UNAVAILABLE');
    expect(r.stderr).toContain('needs the BPF LSM; without it, the agent can only watch (remove guard: to run it so)');
    expect(pinnedGuard({ dir: PIN_DIR })).toBeNull();
  });
});
