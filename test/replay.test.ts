/**
 * `learn` and `replay` on recordings this suite makes: `watch --json`
 * while a compiled caller makes real chroot(2) calls (a root whose name is
 * not UTF-8 among them), then learn → check → replay (denies nothing) →
 * a second recording with an escape-like call (chroot(".") after
 * chdir("/") by the learned executable) → replay denies it; and a policy
 * learned from a jailed service's runs, replayed over a recording of its
 * classic escape (test/attacks/chroot_escape.c), denies the escape. Every
 * `--json` line is checked against events.schema.json.
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { policyContext } from '../ts/policy/evaluate.js';
import { parsePolicy } from '../ts/policy/validate.js';
import { CLI, compileC, ndjson, sleep, TEST_MODE } from './helpers.js';

let base: string;
let caller: string;
/** The non-UTF-8 root: a 0xff byte and a backslash in one component. */
let oddRoot: Buffer;

beforeAll(() => {
  base = realpathSync(mkdtempSync('/tmp/cg-replay-'));
  chmodSync(base, 0o755);
  for (const d of ['jail/a', 'jail/b', 'jail/c']) mkdirSync(`${base}/${d}`, { recursive: true });
  oddRoot = Buffer.concat([Buffer.from(`${base}/odd`), Buffer.from([0xff]), Buffer.from('\\/deep/root')]);
  mkdirSync(oddRoot, { recursive: true });
  // Arguments are strings: the caller reaches the odd root through a link, which the kernel resolves to its bytes.
  symlinkSync(oddRoot, `${base}/odd-link`);
  caller = `${base}/chroot_calls`;
  compileC('test/callers/chroot_calls.c', caller);
});
afterAll(() => rmSync(base, { recursive: true, force: true }));

function cli(args: string[], input?: Buffer) {
  return spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 60_000, ...(input ? { input } : {}) });
}

/** Runs the caller: `plain DIR`, in `cwd`, optionally as uid 65534; returns its pid and result. */
function call(dir: string, opts: { cwd?: string; nobody?: boolean } = {}): { pid: number; ret: number } {
  const argv = opts.nobody ? ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', caller] : [caller];
  const r = spawnSync(argv[0]!, [...argv.slice(1), 'plain', dir], { encoding: 'utf8', cwd: opts.cwd ?? base });
  const [pid, ret] = r.stdout.trim().split(' ').map(Number) as [number, number];
  return { pid, ret };
}

/**
 * `watch --json` (only the caller's comm, so other chroot calls on the
 * host stay out) while `calls` runs; resolves with the recording's bytes
 * once a record of each pid `calls` returns is in it. `args` and `ready`:
 * another recorder and the words it says when it is ready.
 */
async function recordWhile(calls: () => Array<{ pid: number }>, args = ['watch', '--json', '--mode', TEST_MODE, '--comm', 'chroot_calls'], ready = 'watching chroot(2)'): Promise<Buffer> {
  const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const chunks: Buffer[] = [];
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => chunks.push(d));
  const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
  await new Promise<void>((resolve, reject) => {
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
      if (stderr.includes(ready)) resolve();
    });
    child.on('exit', (code) => reject(new Error(`watch exited early with ${code}: ${stderr}`)));
  });
  const pids = calls().map((c) => c.pid);
  const deadline = Date.now() + 10_000;
  while (!pids.every((p) => Buffer.concat(chunks).includes(`"pid":${p},`)) && Date.now() < deadline) await sleep(20);
  child.kill('SIGINT');
  expect(await exited).toBe(0);
  return Buffer.concat(chunks);
}

describe('learn and replay on real recordings', () => {
  let recording: string;
  let policyFile: string;
  const made: Record<string, { pid: number; ret: number }> = {};

  it('learn proposes a policy from a watch --json recording that passes check', async () => {
    const raw = await recordWhile(() => {
      made.a = call(`${base}/jail/a`);
      made.b = call(`${base}/jail/b`);
      made.odd = call(`${base}/odd-link`);
      made.missing = call(`${base}/missing`);
      made.nobody = call(`${base}/jail/a`, { nobody: true });
      return Object.values(made);
    });
    expect([made.a!.ret, made.b!.ret, made.odd!.ret, made.missing!.ret, made.nobody!.ret]).toEqual([0, 0, 0, -2, -1]);
    const records = ndjson(raw.toString());
    expect(records.filter((r) => r.type === 'chroot')).toHaveLength(5);
    // The session names this host's initial mount namespace, as the loader reads it for a policy.
    const initialMntNs = policyContext({ mode: 'audit', rules: [{ id: 'probe', action: 'allow', match: { initialNamespaces: true } }] }).initialMntNs;
    expect(initialMntNs).not.toBeNull();
    expect(records[0]).toMatchObject({ type: 'attach', initialMntNs });
    recording = `${base}/first.ndjson`;
    writeFileSync(recording, raw);

    const learned = cli(['learn', recording]);
    expect(learned.status, learned.stderr).toBe(0);
    expect(learned.stderr).toContain('learned 1 rule (enforce, default deny) from 3 calls; 2 failed before the LSM hook and need no rule');
    policyFile = `${base}/learned.yaml`;
    writeFileSync(policyFile, learned.stdout);
    const policy = parsePolicy(learned.stdout);
    // The two siblings merge into their parent; the non-UTF-8 root stays alone, written with \xff and \\.
    expect(policy).toEqual({
      mode: 'enforce',
      default: 'deny',
      rules: [{ id: 'chroot_calls-uid0', action: 'allow', match: { exe: [caller], uid: 0, subtree: [`${base}/jail`, `${base}/odd\\xff\\\\/deep/root`] } }],
    });
    expect(learned.stdout).toMatch(/^# Learned by chroot-guard learn from .*: 3 calls allowed, by 1 rule; everything else is denied\.$/m);
    expect(learned.stdout).toMatch(/^# 2 calls failed before the LSM hook/m);
    expect(learned.stdout).toMatch(/jail # 2 calls, 2 roots merged$/m);
    expect(learned.stdout).toMatch(/deep\/root # 1 call$/m);
    const check = cli(['check', policyFile]);
    expect(check.status, check.stderr).toBe(0);
    expect(check.stdout).toContain('ok (enforce, 1 rule, default deny)');

    const audit = cli(['learn', '--audit', recording]);
    expect(parsePolicy(audit.stdout)).toEqual({ ...policy, mode: 'audit' });
  });

  it('replaying the learned policy over its own recording denies nothing, without privileges, from a file or stdin', () => {
    // No capabilities at all: replay reads files and the executables' identities only.
    const r = spawnSync('setpriv', ['--bounding-set=-all', '--inh-caps=-all', process.execPath, CLI, 'replay', '--json', '--fail-on-deny', '--policy', policyFile, recording], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const out = ndjson(r.stdout);
    const decisions = out.filter((x) => x.type === 'decision');
    expect(decisions.map((d) => [d.pid, d.action, d.ruleId, d.source, d.denied])).toEqual(
      [made.a!, made.b!, made.odd!].map((c) => [c.pid, 'allow', 'chroot_calls-uid0', 'replay', false]),
    );
    expect(Buffer.from(decisions[2]!.resolvedPathBase64 as string, 'base64').equals(oddRoot)).toBe(true);
    expect(out.at(-1)).toMatchObject({
      type: 'summary', decided: 3, undecided: 2, undecidedByErrno: { ENOENT: 1, EPERM: 1 }, malformed: 0, complete: true,
      records: { attach: 1, chroot: 5, decision: 0, lost: 0, other: 0 },
      actions: { allow: 3, deny: 0, audit: 0 },
      rules: [{ id: 'chroot_calls-uid0', action: 'allow', matched: 3 }],
      default: { action: 'deny', matched: 0 },
    });
    const fromStdin = cli(['replay', '--json', '--policy', policyFile, '-'], readFileSync(recording));
    expect(fromStdin.stdout).toBe(r.stdout);
    const table = cli(['replay', '--policy', policyFile, recording]);
    expect(table.status).toBe(0);
    // The non-UTF-8 byte and the backslash as the table escapes them.
    expect(table.stdout).toContain(`odd\\xff\\\\/deep/root`);
    expect(table.stdout).toMatch(/^chroot_calls-uid0\s+allow\s+3$/m);
    expect(table.stdout).toContain('2 calls failed before the LSM hook, decided by no policy (ENOENT 1, EPERM 1)');
  });

  it('replaying it over a recording with an escape-like call denies that call, and --fail-on-deny exits 8', async () => {
    const again: Record<string, { pid: number; ret: number }> = {};
    const raw = await recordWhile(() => {
      again.inside = call(`${base}/jail/c`);
      // chdir("/") then chroot("."): the new root is /, which the learned policy does not cover.
      again.escape = call('.', { cwd: '/' });
      return Object.values(again);
    });
    const second = `${base}/second.ndjson`;
    writeFileSync(second, raw);
    const r = cli(['replay', '--json', '--fail-on-deny', '--policy', policyFile, second]);
    expect(r.status, r.stderr).toBe(8);
    const out = ndjson(r.stdout);
    expect(out.filter((x) => x.type === 'decision').map((d) => [d.pid, d.resolvedPath, d.action, d.ruleId, d.wouldDeny])).toEqual([
      [again.inside!.pid, `${base}/jail/c`, 'allow', 'chroot_calls-uid0', false],
      [again.escape!.pid, '/', 'deny', null, true],
    ]);
    expect(out.at(-1)).toMatchObject({ type: 'summary', decided: 2, actions: { allow: 1, deny: 1, audit: 0 }, default: { action: 'deny', matched: 1 } });
    // Without --fail-on-deny the would-be denial is reported, not an error.
    const table = cli(['replay', '--summary-only', '--policy', policyFile, second]);
    expect(table.status).toBe(0);
    expect(table.stdout).toMatch(/^\(default\)\s+deny\s+1\s+denied$/m);
  });

  it('a policy learned from a jailed service\'s own runs denies its classic escape when replayed over a recording of it', async () => {
    // test/attacks/chroot_escape.c, as the VM's escape tests run it: `subdir`
    // is the service's legitimate life (chroot(JAIL), chdir("/"), chdir("sub"),
    // chroot(".")); `classic` escapes (chroot("sub") without a chdir, climb
    // out with chdir(".."), chroot(".")).
    const program = `${base}/chroot_escape`;
    compileC('test/attacks/chroot_escape.c', program);
    const jail = `${base}/service`;
    mkdirSync(`${jail}/sub`, { recursive: true });
    const escape = (mode: 'subdir' | 'classic') => {
      const out = JSON.parse(execFileSync(program, [mode, jail], { encoding: 'utf8' })) as { pid: number; results: string[] };
      expect(out.results).toEqual(mode === 'subdir' ? ['ok', 'ok'] : ['ok', 'ok', 'ok']);
      return out;
    };
    const recorder = ['watch', '--json', '--mode', TEST_MODE, '--comm', 'chroot_escape'];
    const normal = `${base}/service.ndjson`;
    writeFileSync(normal, await recordWhile(() => [escape('subdir'), escape('subdir')], recorder));
    const learned = cli(['learn', normal]);
    expect(learned.status, learned.stderr).toBe(0);
    const policyFile = `${base}/service.yaml`;
    writeFileSync(policyFile, learned.stdout);
    // The jail and its subdirectory: one subtree, the jail.
    expect(parsePolicy(learned.stdout).rules).toEqual([{ id: 'chroot_escape-uid0', action: 'allow', match: { exe: [program], uid: 0, subtree: [jail] } }]);
    expect(cli(['replay', '--fail-on-deny', '--summary-only', '--policy', policyFile, normal]).status).toBe(0);

    let escaped = { pid: 0 };
    const attack = `${base}/service-escape.ndjson`;
    writeFileSync(attack, await recordWhile(() => [(escaped = escape('classic'))], recorder));
    // The recording itself says which call escaped: the kernel's escapesRoot.
    const calls = ndjson(readFileSync(attack, 'utf8')).filter((r) => r.type === 'chroot');
    expect(calls.map((c) => [c.path, c.resolvedPath, c.escapesRoot])).toEqual([
      [jail, jail, false],
      ['sub', `${jail}/sub`, false],
      ['.', '/', true],
    ]);
    const r = cli(['replay', '--json', '--fail-on-deny', '--policy', policyFile, attack]);
    expect(r.status, r.stderr).toBe(8);
    expect(ndjson(r.stdout).filter((x) => x.type === 'decision').map((d) => [d.pid, d.resolvedPath, d.action, d.ruleId, d.escapesRoot])).toEqual([
      [escaped.pid, jail, 'allow', 'chroot_escape-uid0', false],
      [escaped.pid, `${jail}/sub`, 'allow', 'chroot_escape-uid0', false],
      [escaped.pid, '/', 'deny', null, true],
    ]);
  });

  it('replay and learn read the decision records of enforce --audit --json as the calls they decided', async () => {
    const made2: Record<string, { pid: number; ret: number }> = {};
    // Where the BPF LSM cannot run (this host), audit falls back to the watch probes and says so; both write decision records.
    const raw = await recordWhile(
      () => {
        made2.inside = call(`${base}/jail/a`);
        made2.escape = call('.', { cwd: '/' });
        made2.missing = call(`${base}/missing`);
        return [made2.inside, made2.escape];
      },
      ['enforce', '--audit', '--json', '--policy', policyFile],
      'Ctrl-C to stop',
    );
    const audited = `${base}/audited.ndjson`;
    writeFileSync(audited, raw);
    const ours = (records: Array<Record<string, unknown>>) => records.filter((x) => x.type === 'decision' && [made2.inside!.pid, made2.escape!.pid, made2.missing!.pid].includes(x.pid as number));
    const recorded = ours(ndjson(raw.toString()));
    expect(recorded.map((d) => [d.pid, d.action])).toEqual([
      [made2.inside!.pid, 'allow'],
      [made2.escape!.pid, 'deny'],
    ]);
    const r = cli(['replay', '--json', '--policy', policyFile, audited]);
    expect(r.status, r.stderr).toBe(0);
    const out = ndjson(r.stdout);
    expect(ours(out).map((d) => [d.pid, d.action, d.ruleId, d.source])).toEqual([
      [made2.inside!.pid, 'allow', 'chroot_calls-uid0', 'replay'],
      [made2.escape!.pid, 'deny', null, 'replay'],
    ]);
    // Replayed in the recording's order, the facts of each decision record unchanged.
    for (const [k, d] of ours(out).entries()) for (const f of ['ts', 'resolvedPathBase64', 'exeBase64', 'uid', 'mntNs']) expect(d[f]).toEqual(recorded[k]![f]);
    const summary = out.at(-1)!;
    expect(summary).toMatchObject({ type: 'summary', records: { chroot: 0 }, undecided: 0 });
    expect((summary.records as { decision: number }).decision).toBe(summary.decided);
    // In audit mode nothing was denied: learn allows both, the chroot to / as the exact path.
    const learned = cli(['learn', audited]);
    expect(learned.status, learned.stderr).toBe(0);
    const rules = parsePolicy(learned.stdout).rules.filter((x) => [x.match?.exe].flat().includes(caller));
    expect(rules.map((x) => x.match)).toEqual([
      { exe: [caller], uid: 0, subtree: [`${base}/jail/a`] },
      { exe: [caller], uid: 0, path: ['/'] },
    ]);
  });
});
